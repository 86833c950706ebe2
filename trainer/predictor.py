"""Trainer-side prediction for one image: largest face (Haar) -> extractor (PyTorch) -> head -> label + uncertainty.

Loads the head from its runtime file (head.infh: plain arrays, no pickle), checks that it was trained on this
extractor (extractor_id), and returns what devices return: label, probabilities, entropy, conformal set.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head, HeadPrediction
from infantino.runtime.contract.layout import HEAD_FILE
from infantino.runtime.contract.preprocess import preprocess
from infantino.runtime.face import create_detector, face_crop

from . import tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePrediction:
    """The head's prediction for one image and where the face was (None: no face found, whole image used)."""

    prediction: HeadPrediction
    face_box: tuple[int, int, int, int] | None
    embedding: np.ndarray
    coverage: float | None = None  # the conformal level the head's prediction sets are calibrated for

    def uncertainty(self) -> dict:
        p = self.prediction
        return {"entropy": p.entropy, "prediction_set": list(p.prediction_set), "probabilities": p.probabilities,
                "coverage": self.coverage, "head_version": p.head_version, "face_box": self.face_box}


class Predictor:
    """Extractor checkpoint + head file -> predictions for BGR images or image files."""

    def __init__(self, extractor_path: str | os.PathLike, head: Head | str | os.PathLike, face: bool = True,
                 check_extractor: bool = True):
        from .extractor import extractor_id, load_extractor  # heavy: trainer.extractor imports torch

        self.model, self.config = load_extractor(extractor_path)
        self.extractor_id = extractor_id(self.model)
        self.head = head if isinstance(head, Head) else load_head_file(head)
        if check_extractor and self.head.extractor_id and self.head.extractor_id != self.extractor_id:
            raise InfantinoError(
                f"head v{self.head.version} was trained on extractor {self.head.extractor_id[:12]}…, but "
                f"{extractor_path} is {self.extractor_id[:12]}…; give the matching extractor")
        self._detector = None
        if face:
            self._detector = create_detector(track=False)  # unrelated images, not a camera: no tracking

    def predict_image(self, image) -> ImagePrediction:
        """A BGR uint8 array or an image path -> ImagePrediction (largest face if one is found)."""
        import torch  # heavy: torch, ~1.3 s to import (train extra)

        from .extractor import embed_batch  # heavy: trainer.extractor imports torch

        img = read_bgr(image) if isinstance(image, (str, os.PathLike)) else image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3) or img.size == 0:
            raise ValueError("image must be a non-empty uint8 BGR or grey numpy array")
        crop, box = self._crop(img)
        x = torch.from_numpy(preprocess([crop], self.config.spec, "NCHW"))
        emb = embed_batch(self.model, x).numpy()[0].astype(np.float32)
        return ImagePrediction(self.head.predict(emb)[0], box, emb, self.head.coverage)

    def _crop(self, img: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        if self._detector is None:
            return img, None
        boxes = self._detector.detect(img)
        if not boxes:
            log.info("no face found: using the whole image")
            return img, None
        crop, b = face_crop(img, boxes[0], self._detector.options)
        return crop, b.as_tuple()


def read_bgr(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR uint8; FileNotFoundError / ValueError naming the file otherwise."""
    import cv2  # optional: OpenCV (device/train extras)

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image {p} (not an image OpenCV can read)")
    return img


def load_head_file(path: str | os.PathLike) -> Head:
    """Head from a head.infh file or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / HEAD_FILE
    if not p.is_file():
        raise FileNotFoundError(f"head file not found: {p}")
    return Head.from_bytes(p.read_bytes())


def resolve_model_pair(head: str | os.PathLike | None = None, extractor: str | os.PathLike | None = None,
                       prefix: str = "infantino") -> tuple[Path, Path]:
    """(extractor.pt, head folder) from local paths or MLflow URIs.

    head defaults to models:/<prefix>-head@champion. The extractor, when not given, is found next to the head
    (a fit output folder), else in the session.json an online session wrote beside it, else from the head's
    registry tag `extractor_version`, else models:/<prefix>-extractor@champion. Predictor then checks that
    the extractor is the one the head was trained on.
    """
    head_src = str(head) if head else f"models:/{prefix}-head@champion"
    head_dir = tracking.resolve_head(head_src)
    if extractor:
        return tracking.resolve_extractor(extractor), head_dir
    beside = head_dir / tracking.EXTRACTOR_FILE
    if beside.is_file():
        return beside, head_dir
    recorded = _session_extractor(head_dir)
    if recorded:
        return tracking.resolve_extractor(recorded), head_dir
    version = registry_extractor_version(head_src, prefix)
    src = f"models:/{prefix}-extractor/{version}" if version else f"models:/{prefix}-extractor@champion"
    return tracking.resolve_extractor(src), head_dir


def _session_extractor(head_dir: Path) -> str | None:
    """The extractor an online session (online_session.py) recorded in session.json beside its head."""
    f = head_dir / "session.json"
    if not f.is_file():
        return None
    try:
        src = json.loads(f.read_text()).get("extractor")
    except (ValueError, OSError):
        return None
    if src and (Path(src).exists() or "://" in src or src.startswith("models:/")):
        return src
    return None


def registry_extractor_version(head_uri: str, prefix: str) -> str | None:
    parsed = tracking.parse_models_uri(head_uri)
    if parsed is None:
        return None
    name, alias, num = parsed
    try:
        client = tracking.mlflow_client()
        v = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, num)
        return v.tags.get("extractor_version")
    except Exception as e:  # a head without the tag: fall back to the champion extractor
        log.debug("no extractor_version tag on %s: %s", head_uri, e)
        return None

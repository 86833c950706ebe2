"""Face detection and cropping before the extractor: a small detector interface, Haar cascade by default.

Frames without a face give an empty list ("no face"), never a guess. Detectors are registered by name
(@register_detector, create_detector) so a better one (e.g. a DNN detector) can be added beside Haar.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

HAAR_FRONTAL = "haarcascade_frontalface_default.xml"


class FaceOptions(BaseModel):
    """How faces are found and cropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str = Field(default="haar", description="registered detector name: haar, full_frame")
    margin: float = Field(default=0.2, ge=0.0, le=2.0, description="fraction of the box size added on each side")
    min_size: int = Field(default=40, ge=8, description="smallest face side in pixels of the full frame")
    largest_only: bool = Field(default=True, description="keep only the largest face (else all faces)")
    scale_factor: float = Field(default=1.1, gt=1.0, le=2.0, description="Haar image pyramid step")
    min_neighbors: int = Field(default=5, ge=0, description="Haar: neighbours a detection needs (higher = "
                               "fewer false faces)")
    detect_max_side: Optional[int] = Field(default=None, ge=64, description="downscale frames whose longer side "
                                           "exceeds this before detecting (faster on HD cameras)")
    equalize: bool = Field(default=True, description="equalise the grey histogram before detecting")
    cascade_path: Optional[str] = Field(default=None, description="Haar cascade XML (default: OpenCV's "
                                        "frontal-face cascade)")


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels: top-left x, y, width, height (and a detector score if it has one)."""

    x: int
    y: int
    w: int
    h: int
    score: Optional[float] = None

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def expand(self, margin: float, frame_shape: tuple[int, ...]) -> "Box":
        """The box grown by `margin` × its size on each side, clamped to the frame."""
        H, W = frame_shape[:2]
        dx, dy = int(round(self.w * margin)), int(round(self.h * margin))
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(W, self.x + self.w + dx), min(H, self.y + self.h + dy)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0), self.score)


def crop_face(frame: np.ndarray, box: Box, margin: float = 0.0) -> tuple[np.ndarray, Box]:
    """(crop, crop_box): the face region grown by `margin` and clamped to the frame (a copy)."""
    b = box.expand(margin, frame.shape)
    if b.w == 0 or b.h == 0:
        raise ValueError(f"box {box.as_tuple()} lies outside the frame {frame.shape[:2]}")
    return np.ascontiguousarray(frame[b.y:b.y + b.h, b.x:b.x + b.w]).copy(), b


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise BackendUnavailable("face detection needs OpenCV 4.x: pip install 'opencv-python-headless>=4.10,<5'") from e
    return cv2


def check_frame(frame) -> np.ndarray:
    """A frame must be a non-empty uint8 BGR (H,W,3), BGRA (H,W,4) or grey (H,W) numpy image."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy image, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 BGR, got dtype {frame.dtype}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))) or frame.size == 0:
        raise ValueError(f"frame must be BGR (H,W,3) or grey (H,W), got shape {frame.shape}")
    return frame


class FaceDetector(ABC):
    """Finds faces in a BGR frame; subclasses implement _detect on a (possibly downscaled) frame."""

    name = ""

    def __init__(self, options: FaceOptions = FaceOptions()):
        self.options = options

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        """Face boxes in frame pixels, largest first (only the largest if options.largest_only); [] = no face."""
        frame = check_frame(frame_bgr)
        o = self.options
        scale = 1.0
        small = frame
        if o.detect_max_side and max(frame.shape[:2]) > o.detect_max_side:
            cv2 = _cv2()
            scale = o.detect_max_side / max(frame.shape[:2])
            small = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        boxes = self._detect(small, max(8, int(o.min_size * scale)))
        if scale != 1.0:
            boxes = [Box(int(b.x / scale), int(b.y / scale), int(round(b.w / scale)), int(round(b.h / scale)), b.score)
                     for b in boxes]
        boxes = [b for b in boxes if min(b.w, b.h) >= o.min_size]
        boxes.sort(key=lambda b: -b.area)
        return boxes[:1] if o.largest_only else boxes

    @abstractmethod
    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        """Boxes in `frame` pixels for faces at least `min_size` pixels wide."""


_DETECTORS: dict[str, type[FaceDetector]] = {}


def register_detector(cls: type[FaceDetector]) -> type[FaceDetector]:
    """Class decorator: register a FaceDetector under cls.name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    _DETECTORS[cls.name] = cls
    return cls


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def create_detector(options: FaceOptions | None = None, **overrides) -> FaceDetector:
    """Build the detector named by options.detector; unknown names list the valid ones and the closest."""
    options = options or FaceOptions()
    if overrides:
        options = options.model_copy(update=overrides)
    cls = _DETECTORS.get(options.detector)
    if cls is None:
        valid = list_detectors()
        close = difflib.get_close_matches(options.detector, valid, n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InfantinoError(f"unknown face detector {options.detector!r}; valid: {', '.join(valid)}.{hint}")
    return cls(options)


def haar_cascade_path(name: str = HAAR_FRONTAL) -> str:
    """Path of one of the Haar cascades shipped with opencv-python(-headless) 4.x."""
    cv2 = _cv2()
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if base and os.path.isfile(os.path.join(base, name)):
        return os.path.join(base, name)
    raise BackendUnavailable(f"OpenCV's Haar cascade {name} was not found (OpenCV {cv2.__version__}); install "
                             "'opencv-python-headless>=4.10,<5' (5.x dropped the cascades) or set "
                             "FaceOptions.cascade_path")


@register_detector
class HaarFaceDetector(FaceDetector):
    """OpenCV's Viola-Jones frontal-face cascade: fast on CPU, frontal faces only."""

    name = "haar"

    def __init__(self, options: FaceOptions = FaceOptions()):
        super().__init__(options)
        cv2 = _cv2()
        if not hasattr(cv2, "CascadeClassifier"):
            raise BackendUnavailable(f"OpenCV {cv2.__version__} has no CascadeClassifier (5.x dropped it): "
                                     "pip install 'opencv-python-headless>=4.10,<5'")
        path = options.cascade_path or haar_cascade_path()
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise InfantinoError(f"cannot load Haar cascade {path}")
        self._lock = threading.Lock()  # CascadeClassifier is not safe to share between threads

    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        cv2 = _cv2()
        if frame.ndim == 2:
            gray = frame
        else:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        if self.options.equalize:
            gray = cv2.equalizeHist(gray)
        with self._lock:
            found = self.cascade.detectMultiScale(gray, scaleFactor=self.options.scale_factor,
                                                  minNeighbors=self.options.min_neighbors,
                                                  minSize=(min_size, min_size))
        return [Box(int(x), int(y), int(w), int(h)) for (x, y, w, h) in np.asarray(found).reshape(-1, 4)]


@register_detector
class FullFrameDetector(FaceDetector):
    """The whole frame is one face: for streams that are already face crops (opt-in, never a default)."""

    name = "full_frame"

    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        return [Box(0, 0, int(frame.shape[1]), int(frame.shape[0]))]

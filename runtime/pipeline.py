"""Frame -> faces -> embeddings -> head: the on-device prediction pipeline, with an atomic head swap.

Each frame takes ONE reference to the current head (under a lock), so every face of a frame is classified by
the same head version, and swap_head() from another thread takes effect between frames without dropping any.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .backends.base import Backend
from .backends.registry import create_backend
from .bundle import Bundle, load_bundle
from .contract.errors import HeadError
from .contract.messages import FacePrediction
from .face import Box, FaceDetector, FaceOptions, check_frame, create_detector, face_crop
from .contract.head import Head, HeadPrediction
from .contract.preprocess import preprocess

log = logging.getLogger(__name__)

STAGES = ("detect", "preprocess", "embed", "head")


@dataclass(frozen=True)
class FaceResult:
    """One face of a frame: where it is, the head's prediction (HeadPrediction, whose fields it also exposes), its
    embedding, and the frame's stage timings (ms). `to_message()` is its MQTT form: the one result type from head
    to message.

    `box` is the detector's box (x, y, w, h); `crop_box` the region fed to the extractor (box + margin,
    clamped; a face with a roll `angle` is fed turned upright, see face.upright_crop); `keypoints` the
    detector's 6 face points, if it gives them. Timings are per frame (all faces of a frame are embedded in
    one batch), so they are the same for every face of that frame.
    """

    box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    prediction: HeadPrediction
    embedding: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    angle: Optional[float] = None
    keypoints: Optional[tuple[tuple[float, float], ...]] = None

    label = property(lambda self: self.prediction.label)
    index = property(lambda self: self.prediction.index)
    probabilities = property(lambda self: self.prediction.probabilities)
    entropy = property(lambda self: self.prediction.entropy)
    prediction_set = property(lambda self: self.prediction.prediction_set)
    head_version = property(lambda self: self.prediction.head_version)

    @property
    def area(self) -> int:
        return int(self.box[2]) * int(self.box[3])

    def to_message(self) -> FacePrediction:
        """The face as the MQTT FacePrediction model."""
        p = self.prediction
        return FacePrediction(box=tuple(int(v) for v in self.box), label=p.label, probabilities=p.probabilities,
                              entropy=p.entropy, prediction_set=list(p.prediction_set))


@dataclass(frozen=True)
class FrameResult:
    """All faces of a frame (empty = no face) and the frame's timings, also when no face was found."""

    faces: list[FaceResult]
    timings: dict[str, float]
    head_version: Optional[int]


class Pipeline:
    """Pipeline(bundle, backend="auto", face=FaceOptions(), threads=None).predict(frame_bgr) -> [FaceResult]."""

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str | Backend = "auto",
                 face: Optional[FaceOptions] = None, threads: Optional[int] = None,
                 backend_config: Any = None, precision: Optional[str] = None,
                 detector: Optional[FaceDetector] = None, head: Optional[Head] = None):
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)  # public key from $INFANTINO_PUBLIC_KEY
        self.bundle = bundle
        self.spec = bundle.manifest.preprocess
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            self.backend = create_backend(backend, bundle, backend_config, threads=threads, precision=precision)
        self.detector = detector or create_detector(face or FaceOptions())
        self.face_options = self.detector.options
        self._head_lock = threading.Lock()
        start = head if head is not None else bundle.head
        self._check_head(start)
        self._head = start

    # ---- head -------------------------------------------------------------------------------------
    @property
    def head(self) -> Head:
        """The head in use now."""
        with self._head_lock:
            return self._head

    def _check_head(self, head: Head) -> None:
        if not isinstance(head, Head):
            raise HeadError(f"expected a Head, got {type(head).__name__}")
        head.check_fits(self.bundle.extractor_id, self.bundle.embedding_dim, self.bundle.classes)

    def swap_head(self, new_head: Head) -> Head:
        """Replace the head atomically (thread-safe; frames in flight finish with the old one); returns the old."""
        self._check_head(new_head)
        with self._head_lock:
            old, self._head = self._head, new_head
        log.info("head swapped: v%d -> v%d", old.version, new_head.version)
        return old

    # ---- stages -------------------------------------------------------------------------------------
    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (N, D) of face crops (BGR uint8), preprocessed per the bundle's manifest."""
        return self.backend.embed(preprocess(list(crops), self.spec, self.backend.input_layout))

    def predict(self, frame_bgr: np.ndarray) -> list[FaceResult]:
        """Results for every face found in a BGR frame; [] when there is no face."""
        return self.predict_frame(frame_bgr).faces

    def predict_frame(self, frame_bgr: np.ndarray) -> FrameResult:
        """predict() plus the frame's timings even when no face was found."""
        frame = check_frame(frame_bgr)
        t0 = time.perf_counter()
        boxes = self.detector.detect(frame)
        t1 = time.perf_counter()
        timings = {"detect": (t1 - t0) * 1e3}
        if not boxes:
            return FrameResult([], timings, None)
        crops, crop_boxes = [], []
        for b in boxes:
            # A box with a roll angle (BlazeFace) is cut out upright; crop_box stays the axis-aligned region.
            c, cb = face_crop(frame, b, self.face_options)
            crops.append(c)
            crop_boxes.append(cb)
        return self._classify(crops, boxes, crop_boxes, timings)

    def classify_crops(self, crops: Sequence[np.ndarray]) -> list[FaceResult]:
        """Classify images that already are face crops (no detection); box = the whole crop."""
        crops = [check_frame(c) for c in crops]
        if not crops:
            return []
        boxes = [Box(0, 0, c.shape[1], c.shape[0]) for c in crops]
        return self._classify(crops, boxes, boxes, {"detect": 0.0}).faces

    def _classify(self, crops, boxes, crop_boxes, timings) -> FrameResult:
        t1 = time.perf_counter()
        batch = preprocess(crops, self.spec, self.backend.input_layout)
        t2 = time.perf_counter()
        emb = self.backend.embed(batch)
        t3 = time.perf_counter()
        with self._head_lock:  # one head reference per frame: never two versions within a frame
            head = self._head
        preds = head.predict(emb)
        t4 = time.perf_counter()
        timings.update(preprocess=(t2 - t1) * 1e3, embed=(t3 - t2) * 1e3, head=(t4 - t3) * 1e3)
        faces = [
            FaceResult(box=b.as_tuple(), crop_box=cb.as_tuple(), prediction=p, embedding=emb[i].copy(),
                       timings=dict(timings), angle=b.angle, keypoints=b.keypoints)
            for i, (b, cb, p) in enumerate(zip(boxes, crop_boxes, preds))
        ]
        return FrameResult(faces, dict(timings), head.version)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"Pipeline(backend={self.backend.name}:{self.backend.artifact.file}, detector={self.detector.name}, "
                f"head_version={self.head.version})")

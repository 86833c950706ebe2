"""The live view's JPEGs: the newest processed frame with its boxes, labels, probabilities and prediction sets
drawn, encoded on the web server's threads at most `max_fps` times a second and only when a page asks for one.
The camera loop only hands over a reference to its newest frame; it never waits for this."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from infantino.runtime.contract.classes import CLASSES

from .view import LiveSource

log = logging.getLogger(__name__)

# One colour (BGR) per class, in CLASSES order: angry, disgust, fear, happy, sad, surprise, neutral.
COLOURS = {c: col for c, col in zip(CLASSES, [(60, 60, 230), (60, 160, 60), (180, 80, 160), (40, 200, 250),
                                              (200, 120, 40), (230, 200, 40), (190, 190, 190)])}


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG of one frame and what it shows."""

    source: LiveSource
    jpeg: bytes
    encoded_at: float


class LiveEncoder:
    """Encodes the newest frame on demand, at most max_fps per second, keeping the last `keep` JPEGs by frame id."""

    def __init__(self, latest: Callable[[], Optional[LiveSource]], max_fps: float = 5.0, max_width: int = 960,
                 quality: int = 80, keep: int = 4):
        self._latest = latest
        self.min_gap = 0.9 / max_fps  # a little slack: a page polling at exactly max_fps still gets every frame
        self.max_width = max_width
        self.quality = quality
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[int, EncodedFrame] = collections.OrderedDict()
        self.keep = keep
        self.encoded = 0
        self.last_request = 0.0

    def current(self) -> Optional[EncodedFrame]:
        """The newest encoded frame, encoding the daemon's newest one if the rate limit allows."""
        with self._lock:
            now = time.monotonic()
            self.last_request = now
            last = next(reversed(self._cache.values())) if self._cache else None
            if last is not None and now - last.encoded_at < self.min_gap:
                return last
            src = self._latest()
            if src is None or (last is not None and src.frame_id == last.source.frame_id):
                return last
            enc = EncodedFrame(src, encode(src, self.max_width, self.quality), now)
            self.encoded += 1
            self._cache[src.frame_id] = enc
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
            return enc

    def jpeg(self, frame_id: int) -> Optional[bytes]:
        with self._lock:
            enc = self._cache.get(frame_id)
            return enc.jpeg if enc is not None else None


def encode(src: LiveSource, max_width: int, quality: int) -> bytes:
    """The frame, scaled to at most max_width, with every face annotated, as JPEG bytes."""
    img = annotate(src.frame, src.faces, max_width)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def annotate(frame: np.ndarray, faces, max_width: int) -> np.ndarray:
    """A copy of the frame (scaled down if wider than max_width) with boxes, label, p and the prediction set."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_width / float(w))
    img = cv2.resize(frame, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else frame.copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    thick = max(1, int(round(img.shape[1] / 400)))
    font = max(0.35, img.shape[1] / 1400)
    for i, f in enumerate(faces):
        x, y, bw, bh = (int(round(v * scale)) for v in f.box)
        colour = COLOURS.get(f.label, (255, 255, 255))
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, thick)
        p = f.probabilities.get(f.label, 0.0)
        text = f"{i + 1}: {f.label} {p:.2f}"
        if len(f.prediction_set) > 1:
            text += " {" + ",".join(f.prediction_set) + "}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y - 4 if y - th - base - 4 >= 0 else min(img.shape[0] - 2, y + bh + th + 4)
        cv2.rectangle(img, (x, ty - th - base), (x + tw + 4, ty + base), colour, -1)
        cv2.putText(img, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font, (20, 20, 20), 1, cv2.LINE_AA)
    return img

"""The running head's health on live frames, for the update service's rollout gate (never images, only figures).

After each head swap the monitor runs the replaced head as a shadow on the same faces (a small MLP on the
embedding: microseconds) and accumulates, per face, the entropy and conformal set size of both heads and whether
their top-1 differs; it also keeps the frame rate and latency from just before the swap, so a canary device
reports "this version against the one it replaced, on the same frames".
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from infantino.runtime.contract.head import Head, entropy, prediction_set_indices
from infantino.runtime.contract.messages import HeadHealth


class HealthMonitor:
    """Per-face sums for the current head and its shadow (the head before the last swap); thread-safe."""

    def __init__(self, head: Head):
        self._lock = threading.Lock()
        self._reset(head, None, None, None)

    def _reset(self, head: Head, baseline: Optional[Head], fps: Optional[float], latency: Optional[float]) -> None:
        self.version, self.sha256 = head.version, head.sha256
        self.baseline = baseline if baseline is not None and baseline.input_dim == head.input_dim else None
        # set sizes compare only between two calibrated heads (an uncalibrated head's "set" is its top-1)
        self.compare_sets = (self.baseline is not None and self.baseline.conformal_qhat is not None
                             and head.conformal_qhat is not None)
        self.since = time.time()
        self.baseline_fps, self.baseline_latency_ms = fps, latency
        self.faces = 0
        self.sums = np.zeros(5)  # entropy, set size, baseline entropy, baseline set size, label changed

    def head_changed(self, old: Head, new: Head, fps: Optional[float] = None,
                     latency_ms: Optional[float] = None) -> None:
        """A new head runs from now on; `old` becomes the shadow, `fps`/`latency_ms` the figures before the swap."""
        with self._lock:
            if new.version != self.version or new.sha256 != self.sha256:
                self._reset(new, old, fps, latency_ms)

    def observe(self, faces) -> None:
        """Add one frame's faces (runtime FaceResult: prediction + embedding) to the sums."""
        if not faces:
            return
        with self._lock:
            baseline = self.baseline
            if faces[0].head_version != self.version:  # a frame that started before the swap
                return
            for f in faces:
                p = f.prediction
                row = [p.entropy, len(p.prediction_set), 0.0, 0.0, 0.0]
                if baseline is not None:
                    probs = baseline.forward(np.asarray(f.embedding, dtype=np.float32))[0]
                    row[2] = entropy(probs)
                    row[3] = len(prediction_set_indices(probs, baseline.conformal_qhat))
                    row[4] = float(int(np.argmax(probs)) != p.index)
                self.sums += row
                self.faces += 1

    def report(self, fps: Optional[float] = None, latency_ms: Optional[float] = None) -> HeadHealth:
        """The figures so far (means per face) as the status message's `health`."""
        with self._lock:
            n = self.faces
            m = self.sums / n if n else None
            has_base = self.baseline is not None and n > 0
            return HeadHealth(
                version=self.version, baseline_version=self.baseline.version if self.baseline is not None else None,
                since=round(self.since, 3), faces=n,
                entropy=round(float(m[0]), 4) if n else None, set_size=round(float(m[1]), 4) if n else None,
                baseline_entropy=round(float(m[2]), 4) if has_base else None,
                baseline_set_size=round(float(m[3]), 4) if has_base and self.compare_sets else None,
                label_changed=round(float(m[4]), 4) if has_base else None,
                fps=fps, baseline_fps=self.baseline_fps, latency_ms=latency_ms,
                baseline_latency_ms=self.baseline_latency_ms)

"""Device/OTA fixtures: a chain of real heads (sklearn MLP, partial_fit steps) and forged signed updates."""

from __future__ import annotations

import numpy as np
import pytest

DEVICE_EXT = "d" * 64  # extractor id used by the pure OTA tests


def make_head_chain(n: int = 6, extractor_id: str = DEVICE_EXT, seed: int = 0, hidden=(16,)):
    """Heads v0..v(n-1): one sklearn MLP trained a step further for each version."""
    from sklearn.neural_network import MLPClassifier

    from infantino.runtime.contract.head import Head

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(140, 64)).astype(np.float32)
    y = np.arange(140) % 7
    m = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed)
    m.partial_fit(X, y, classes=np.arange(7))
    heads = [Head.from_sklearn(m, version=0, extractor_id=extractor_id)]
    for v in range(1, n):
        m.partial_fit(X[v * 7:(v + 1) * 7], y[v * 7:(v + 1) * 7])
        heads.append(Head.from_sklearn(m, version=v, extractor_id=extractor_id))
    return heads


@pytest.fixture(scope="session")
def device_heads():
    """Six real heads v0..v5 for extractor DEVICE_EXT."""
    return make_head_chain(6)


def forge_update(header_changes: dict, arrays, dtype: str, private_key, base_header: dict) -> bytes:
    """A correctly signed update with a hand-made header/payload (to test checks after the signature)."""
    from infantino.runtime.contract import binfmt
    from infantino.runtime.contract.signing import sign

    payload = binfmt.arrays_to_bytes(arrays, dtype)
    header = dict(base_header)
    header.update({"shapes": [list(a.shape) for a in arrays], "dtype": dtype, "payload_len": len(payload),
                   "compression": "none"})
    header.update(header_changes)
    body = binfmt.pack(b"INFU", header, payload)
    return body + sign(private_key, body)


def update_header(blob: bytes) -> dict:
    """An update's header, read without checking its signature (tests only: devices never do this)."""
    from infantino.runtime.contract import binfmt

    return binfmt.unpack(b"INFU", blob[:-64])[0]


class ProjectionPipeline:
    """A small, real frame pipeline for daemon tests (same interface as runtime.Pipeline): the face is the whole
    frame, its embedding a fixed random projection of the 8x8 grey thumbnail, classified by a runtime Head.
    Tests with a compiled bundle use runtime.Pipeline itself; this one keeps MQTT/OTA tests independent of it."""

    def __init__(self, head, delay_s: float = 0.0, seed: int = 0):
        import threading

        self._head = head
        self._lock = threading.Lock()
        self.delay_s = delay_s
        self.proj = np.random.default_rng(seed).normal(size=(64, 64)).astype(np.float32) / 8.0
        self.swaps = 0

    @property
    def head(self):
        with self._lock:
            return self._head

    def swap_head(self, new):
        if new.input_dim != 64:
            raise ValueError("head must take 64-d embeddings")
        with self._lock:
            old, self._head = self._head, new
            self.swaps += 1
        return old

    def embed(self, frame):
        import cv2

        g = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (8, 8), interpolation=cv2.INTER_AREA)
        return (g.reshape(-1).astype(np.float32) / 255.0 - 0.5) @ self.proj

    def predict_frame(self, frame):
        import time
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        emb = self.embed(frame)
        t1 = time.perf_counter()
        with self._lock:
            head = self._head
        p = head.predict(emb[None])[0]
        t2 = time.perf_counter()
        timings = {"detect": 0.0, "preprocess": 0.0, "embed": (t1 - t0) * 1e3, "head": (t2 - t1) * 1e3}
        from infantino.runtime.pipeline import FaceResult, FrameResult

        box = (0, 0, frame.shape[1], frame.shape[0])
        face = FaceResult(box=box, crop_box=box, prediction=p, embedding=emb, timings=timings)
        return FrameResult([face], timings, head.version)

    def predict(self, frame):
        return self.predict_frame(frame).faces


def synthetic_frames(fps: float = 50.0, n: int | None = None, seed: int = 0, stall_after: int | None = None,
                     stall_s: float = 0.0):
    """Endless (or n) 48x64 BGR frames with changing content at about `fps`; optionally hang once (stall)."""
    import time

    rng = np.random.default_rng(seed)
    i = 0
    while n is None or i < n:
        if stall_after is not None and i == stall_after:
            time.sleep(stall_s)
        frame = np.full((48, 64, 3), (i * 7) % 256, np.uint8)
        frame[::4] = rng.integers(0, 256, size=frame[::4].shape, dtype=np.uint8)
        yield frame
        i += 1
        time.sleep(1.0 / fps)

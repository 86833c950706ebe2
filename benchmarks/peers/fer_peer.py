"""The peer side of `infantino-bench frames`: the `fer` package's FER(...).detect_emotions, timed per frame.

Runs with the peer venv's python (.venv-peers: fer, tensorflow-cpu, opencv, facenet-pytorch for MTCNN) and
imports nothing of infantino: the standard library, numpy, and what fer itself needs.

    python fer_peer.py --frames FRAMES.npz --detector haar|mtcnn [--warmup N]

FRAMES.npz holds `frames` (N, H, W, 3) uint8 BGR. Protocol (one JSON object per line): on stdout first
{"event": "ready", ...} (or {"event": "failed", "reason": ...} and exit 0); then for each line read on stdin
{"cmd": "round"} it runs detect_emotions on every frame in order and answers {"event": "round", "frames": [...]},
each frame {"ms", "detect_ms", "classify_ms", "faces": [{"box": [x, y, w, h], "probs": [7 floats]}]};
{"cmd": "quit"} (or end of input) ends it. Anything the libraries print goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _protocol_stream():
    """A private copy of stdout for the protocol; fd 1 then points at stderr so library prints cannot mix in."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _send(out, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _versions() -> dict:
    from importlib import metadata

    got = {}
    for name in ("fer", "tensorflow-cpu", "tensorflow", "opencv-python-headless", "opencv-python",
                 "opencv-contrib-python", "facenet-pytorch", "torch", "torchvision", "numpy", "keras"):
        try:
            got[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return got


def make_fer(detector: str):
    """FER(mtcnn=...) with fer's defaults, plus a note on how it was made to load here."""
    notes = []
    if detector == "mtcnn":
        # Importing torch's stack after TensorFlow segfaults here (triton under torch._dynamo, pulled in by
        # torchvision.ops); importing it first is harmless and is what a user would have to do too.
        import facenet_pytorch  # noqa: F401
        import torch  # noqa: F401
        import torchvision.ops  # noqa: F401

        notes.append("torch/facenet_pytorch imported before fer (TensorFlow first segfaults on import)")
    try:
        from fer import FER
    except ImportError:  # fer 25.10.3's package __init__ does not export FER
        from fer.fer import FER

        notes.append("from fer.fer import FER (fer's __init__ does not export FER)")
    return FER(mtcnn=detector == "mtcnn"), notes


def _timed(fn, sink: list):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sink.append((time.perf_counter() - t0) * 1e3)
    return wrapper


def run_frame(fer, frame, stage_sink: dict) -> dict:
    """detect_emotions on one frame: wall time, the detector's and the classifier's share, boxes + probabilities."""
    stage_sink["detect"].clear()
    stage_sink["classify"].clear()
    t0 = time.perf_counter()
    faces = fer.detect_emotions(frame)
    ms = (time.perf_counter() - t0) * 1e3
    out = []
    for f in faces:
        box = [int(v) for v in f["box"]]
        out.append({"box": box, "probs": [float(f["emotions"].get(k, 0.0)) for k in LABELS]})
    return {"ms": ms, "detect_ms": sum(stage_sink["detect"]), "classify_ms": sum(stage_sink["classify"]),
            "faces": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--frames", required=True, help=".npz with `frames` (N, H, W, 3) uint8 BGR")
    p.add_argument("--detector", choices=("haar", "mtcnn"), required=True, help="FER(mtcnn=False) or FER(mtcnn=True)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames before `ready` (default 3)")
    args = p.parse_args(argv)
    proto = _protocol_stream()

    import numpy as np

    with np.load(args.frames) as z:
        frames = np.ascontiguousarray(z["frames"])
    try:
        fer, notes = make_fer(args.detector)
    except BaseException as e:  # any import or load failure becomes the row's reason
        _send(proto, {"event": "failed", "reason": f"{type(e).__name__}: {e}", "versions": _versions()})
        return 0
    sink: dict = {"detect": [], "classify": []}
    fer.find_faces = _timed(fer.find_faces, sink["detect"])  # instance attributes: detect_emotions calls these
    fer._classify_emotions = _timed(fer._classify_emotions, sink["classify"])
    try:
        for i in range(min(args.warmup, len(frames))):
            run_frame(fer, frames[i], sink)
    except Exception as e:
        _send(proto, {"event": "failed", "reason": f"warm-up: {type(e).__name__}: {e}", "versions": _versions()})
        return 0
    info = {"cv2_threads": None, "torch_threads": None}
    try:
        import cv2

        info["cv2_threads"] = cv2.getNumThreads()
    except Exception:
        pass
    if args.detector == "mtcnn":
        import torch

        info["torch_threads"] = torch.get_num_threads()
    _send(proto, {"event": "ready", "frames": int(len(frames)), "versions": _versions(), "notes": notes,
                  "info": info, "python": sys.version.split()[0]})
    for line in sys.stdin:
        cmd = json.loads(line or "{}").get("cmd")
        if cmd == "quit":
            break
        if cmd != "round":
            _send(proto, {"event": "error", "reason": f"unknown command {cmd!r}"})
            continue
        try:
            results = [run_frame(fer, f, sink) for f in frames]
        except Exception as e:
            _send(proto, {"event": "error", "reason": f"{type(e).__name__}: {e}"})
            continue
        _send(proto, {"event": "round", "frames": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

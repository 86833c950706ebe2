"""A test clip with real faces for `infantino-bench pipeline`: the photos shipped with matplotlib / scikit-image.

No camera and no data set here, but matplotlib ships grace_hopper.jpg and scikit-image the astronaut photo,
both with a face the Haar detector finds. The clip alternates them, drifting a few pixels per frame on a
plain background, so every frame goes through detect -> crop -> embed -> head like a camera frame would.

    python -m infantino.benchmarks.videos OUT.avi [--frames 120] [--width 640 --height 480]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)


def package_faces() -> list[np.ndarray]:
    """BGR photos with one frontal face each, from the installed packages (at least one must be present)."""
    import cv2  # optional: OpenCV (device/train extras)

    out = []
    try:
        import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)

        img = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
        if img is not None:
            out.append(img)
    except ImportError:
        pass
    try:
        from skimage import data  # optional: scikit-image (train/test extras)

        out.append(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    except ImportError:
        pass
    if not out:
        raise InfantinoError("no face photo available: install matplotlib or scikit-image")
    return out


def face_frames(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[np.ndarray]:
    """n BGR frames: a package photo (scaled to ~70% of the frame height) drifting over a grey background."""
    import cv2  # optional: OpenCV (device/train extras)

    photos = package_faces()
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        src = photos[(i // 10) % len(photos)]
        scale = 0.7 * height / src.shape[0]
        ph = cv2.resize(src, (int(src.shape[1] * scale), int(src.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        ph = ph[:, : min(ph.shape[1], width)]
        frame = np.full((height, width, 3), 90, np.uint8)
        x = int((width - ph.shape[1]) / 2 + 20 * np.sin(i / 7.0))
        y = int((height - ph.shape[0]) / 2 + 10 * np.cos(i / 5.0))
        x, y = max(0, min(x, width - ph.shape[1])), max(0, min(y, height - ph.shape[0]))
        frame[y:y + ph.shape[0], x:x + ph.shape[1]] = ph
        noise = rng.integers(-3, 4, frame.shape, dtype=np.int16)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def write_face_video(path: str | Path, n: int = 120, width: int = 640, height: int = 480, fps: float = 15.0) -> Path:
    """Write face_frames() as an MJPG .avi (or mp4v .mp4) and return its path."""
    import cv2  # optional: OpenCV (device/train extras)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    w = cv2.VideoWriter(str(tmp), fourcc, fps, (width, height))
    if not w.isOpened():
        raise InfantinoError(f"OpenCV cannot write {path.suffix} video here (try .avi)")
    try:
        for f in face_frames(n, width, height):
            w.write(f)
    finally:
        w.release()
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infantino.benchmarks.videos", description=__doc__.strip().splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    a = p.parse_args(argv)
    print(write_face_video(a.out, a.frames, a.width, a.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())

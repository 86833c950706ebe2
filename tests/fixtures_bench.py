"""Fixtures of the benchmarks part: a tiny signed bundle with its extractor checkpoint, a face video, a data folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class BenchBundle:
    path: Path
    public_key: Path
    checkpoint: Path | None
    tar: Path | None = None


@pytest.fixture(scope="session")
def bench_bundle(request, tmp_path_factory, keypair) -> BenchBundle:
    """The tiny test bundle (64 px test_efficientnet) and the extractor checkpoint it was compiled from.

    The compiler's `compiled_bundle` (ONNX + TFLite fp32/fp16/int8) when that part is installed, else the
    runtime part's directly-built bundle (ONNX + fp32 TFLite) with a checkpoint of its torch model.
    """
    bundle, ckpt, tar = _compiled(request)
    if bundle is None:  # the runtime part's directly-built bundle (ONNX + fp32 TFLite) and its torch model
        from infantino.trainer.extractor import save_checkpoint

        bundle = request.getfixturevalue("runtime_bundle")
        model, cfg = request.getfixturevalue("runtime_model")
        ckpt = tmp_path_factory.mktemp("bench_ckpt") / "extractor.pt"
        save_checkpoint(ckpt, model, cfg)
    return BenchBundle(Path(bundle), Path(keypair[1]), Path(ckpt) if ckpt else None, Path(tar) if tar else None)


def _compiled(request):
    """(bundle dir, checkpoint) from the compiler's `compiled_bundle` fixture (ONNX + TFLite fp32/fp16/int8)."""
    try:
        cb = request.getfixturevalue("compiled_bundle")
    except pytest.FixtureLookupError:
        return None, None, None
    ckpt = Path(cb.model_dir) / "extractor.pt"
    return cb.path, ckpt if ckpt.is_file() else None, cb.tar


@pytest.fixture(scope="session")
def bench_face_video(tmp_path_factory, real_faces) -> Path:
    """A short MJPG clip (320x240) of the package photos drifting over a grey background."""
    from infantino.benchmarks.videos import write_face_video

    return write_face_video(tmp_path_factory.mktemp("bench_video") / "faces.avi", n=12, width=320, height=240)


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory, real_faces) -> Path:
    """A labelled folder DIR/<class>/*.png of real face crops (labels arbitrary but fixed)."""
    import cv2

    d = tmp_path_factory.mktemp("bench_data")
    rng = np.random.default_rng(0)
    for i, (cls, (name, img)) in enumerate(zip(("happy", "neutral"), real_faces.items())):
        (d / cls).mkdir()
        for k in range(3):
            h, w = img.shape[:2]
            y, x = rng.integers(0, h // 8), rng.integers(0, w // 8)
            cv2.imwrite(str(d / cls / f"{name}_{k}.png"), img[y:y + h * 3 // 4, x:x + w * 3 // 4])
    return d

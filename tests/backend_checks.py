"""ONE generic check suite that every inference backend is run through (like river's estimator checks).

Each check takes (make_backend, bundle): `make_backend()` returns a fresh backend running one artifact of the
bundle. tests/test_runtime_backends.py parametrises these over every registered backend, every artifact the
backend can run, and every test bundle; unavailable backends are skipped with the backend's own reason.
A new backend gets all of this by registering itself.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import pytest

from infantino.runtime.contract.errors import InfantinoError

# Parity with the PyTorch reference embeddings, by artifact precision.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.9}
MAX_REL_ERR = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5}
# Agreement between batch sizes of the same backend (batching must not change results beyond float noise).
BATCH_TOL = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-1}


def to_layout(batch_nchw: np.ndarray, layout: str) -> np.ndarray:
    """Reference inputs are NCHW; give them in the backend's layout."""
    return np.ascontiguousarray(batch_nchw.transpose(0, 2, 3, 1)) if layout == "NHWC" else batch_nchw


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def _inputs(backend, bundle) -> np.ndarray:
    x, _ = bundle.reference()
    return to_layout(x, backend.input_layout)


def check_layout_matches_manifest(make_backend, bundle):
    b = make_backend()
    spec = bundle.manifest.preprocess
    h, w = spec.input_size
    want = (spec.channels, h, w) if b.artifact.layout == "NCHW" else (h, w, spec.channels)
    assert b.input_layout == b.artifact.layout in ("NCHW", "NHWC")
    assert b.sample_shape == want
    assert b.embedding_dim == bundle.manifest.embedding_dim


def check_shape_and_dtype(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)
    y = b.embed(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (x.shape[0], bundle.manifest.embedding_dim)
    assert np.all(np.isfinite(y))
    assert y.flags["C_CONTIGUOUS"]


def check_parity_with_reference(make_backend, bundle):
    b = make_backend()
    x, ref = bundle.reference()
    y = b.embed(to_layout(x, b.input_layout))
    p = b.artifact.precision
    cos = cosine_rows(y, ref)
    rel = float(np.abs(y - ref).max() / (np.abs(ref).max() + 1e-12))
    assert cos.min() >= MIN_COSINE[p], f"{b.artifact.file}: min cosine {cos.min():.6f} < {MIN_COSINE[p]}"
    assert rel <= MAX_REL_ERR[p], f"{b.artifact.file}: max relative error {rel:.2e} > {MAX_REL_ERR[p]}"


def check_batch_sizes(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)
    full = b.embed(x)
    tol = BATCH_TOL[b.artifact.precision] * (np.abs(full).max() + 1e-12)
    n = x.shape[0]
    for size in (1, 2, 3, n, 1):  # growing, full, and back to 1 (interpreters must resize back)
        size = min(size, n)
        parts = np.concatenate([b.embed(x[i:i + size]) for i in range(0, n, size)])
        assert parts.shape == full.shape
        assert np.abs(parts - full).max() <= tol, f"batch size {size} changes results"


def check_deterministic(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)[:3]
    assert np.array_equal(b.embed(x), b.embed(x.copy()))


def check_bad_inputs(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)[:2]
    bad = {
        "uint8 dtype": x.astype(np.uint8),
        "int dtype": x.astype(np.int32),
        "missing batch axis": x[0],
        "other layout": np.ascontiguousarray(np.swapaxes(x, 1, 3)) if x.shape[1] != x.shape[3] else x[:, :1],
        "wrong size": np.zeros((2, *[s + 1 for s in x.shape[1:]]), np.float32),
        "empty batch": x[:0],
        "NaN": np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32),
        "Inf": np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x).astype(np.float32),
        "not an array": x.tolist(),
    }
    for what, value in bad.items():
        with pytest.raises(ValueError):
            b.embed(value)
            pytest.fail(f"{b.name} accepted {what}")
    # float64 input of the right shape is fine (cast), and the backend still works after the refusals.
    assert np.allclose(b.embed(x.astype(np.float64)), b.embed(x), atol=1e-5 * (np.abs(b.embed(x)).max() + 1e-9))


def check_concurrent_calls(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)
    want = [b.embed(x[i:i + 1]) for i in range(min(4, len(x)))]
    errors, results = [], {}

    def worker(k):
        try:
            for _ in range(5):
                i = k % len(want)
                results.setdefault(k, []).append(np.array_equal(b.embed(x[i:i + 1]), want[i]))
        except Exception as e:  # collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(all(v) for v in results.values()), "concurrent calls returned another input's embedding"


def check_close(make_backend, bundle):
    b = make_backend()
    x = _inputs(b, bundle)[:1]
    b.embed(x)
    b.close()
    with pytest.raises(InfantinoError, match="closed"):
        b.embed(x)


ALL_CHECKS: list[Callable] = [
    check_layout_matches_manifest, check_shape_and_dtype, check_parity_with_reference, check_batch_sizes,
    check_deterministic, check_bad_inputs, check_concurrent_calls, check_close,
]

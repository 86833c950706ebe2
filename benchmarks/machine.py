"""The machine description stored with every result (CPU, cores, load, library versions) and its peak FLOP/s.

Results from different hosts are only comparable with this next to them. Peak FLOP/s is measured once per
run with a large float32 matrix product in numpy (its BLAS is the best-tuned dense kernel on the host) at the
benchmark's thread count; model FLOPs per image x images/s / peak is then the fraction of the machine used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LIBRARIES = ("infantino", "numpy", "onnxruntime", "ai-edge-litert", "tensorflow", "tensorrt", "torch", "timm",
             "onnx", "opencv-python-headless", "scikit-learn", "paho-mqtt", "mlflow")
ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd",
              "asimddp", "sve")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(info: str | None = None) -> str:
    """The CPU's marketing name (/proc/cpuinfo "model name", ARM "Hardware"/"Model"), else platform.processor()."""
    info = _cpuinfo() if info is None else info
    for key in ("model name", "Hardware", "Model", "cpu model"):
        for line in info.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine()


def physical_cores(info: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where the file does not say."""
    info = _cpuinfo() if info is None else info
    pairs, phys = set(), "0"
    for line in info.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "physical id":
            phys = v.strip()
        elif k == "core id":
            pairs.add((phys, v.strip()))
    return len(pairs) or None


def cpu_flags(info: str | None = None) -> list[str]:
    """The SIMD features that matter for inference kernels (AVX2/AVX-512/VNNI/NEON...)."""
    info = _cpuinfo() if info is None else info
    for line in info.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("flags", "Features"):
            have = set(v.split())
            return [f for f in SIMD_FLAGS if f in have]
    return []


def library_versions() -> dict[str, str | None]:
    """Installed versions (from package metadata, without importing anything heavy); None if absent."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("opencv-python-headless") is None:
        try:
            out["opencv-python"] = metadata.version("opencv-python")
        except metadata.PackageNotFoundError:
            pass
    return out


def blas_info() -> list[dict]:
    """numpy's BLAS (name, version, threads) via threadpoolctl when present."""
    try:
        from threadpoolctl import threadpool_info  # optional: threadpoolctl comes with scikit-learn (train extra)
    except ImportError:
        return []
    return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure_peak_flops(threads: int | None = None, n: int = 2048, repeats: int = 8) -> dict:
    """Best-of-`repeats` float32 n x n matmul throughput in numpy (2 n^3 FLOPs each), BLAS limited to `threads`.

    The best (not the mean) is taken: peak means what the cores can do when nothing else runs.
    """
    if n < 64:
        raise ValueError(f"matrix size {n} is too small to measure peak FLOP/s")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    limiter = contextlib.nullcontext()
    if threads:
        try:
            from threadpoolctl import threadpool_limits  # optional: threadpoolctl comes with scikit-learn (train extra)

            limiter = threadpool_limits(limits=threads, user_api="blas")
        except ImportError:
            log.info("threadpoolctl missing: peak FLOP/s measured with numpy's default BLAS threads")
    with limiter:
        a @ b  # warm-up: page in, spin up the BLAS threads
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"peak_gflops": flops / best / 1e9, "matmul_n": n, "dtype": "float32", "best_s": best,
            "repeats": repeats, "threads": threads, "method": "numpy float32 matmul, best of repeats"}


def describe(threads: int | None = None, peak: bool = True, peak_n: int = 2048) -> dict:
    """Everything needed to compare results across hosts; measures peak FLOP/s once unless peak=False."""
    info = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    d = {
        "hostname": socket.gethostname(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(info),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(info),
        "usable_cores": affinity,
        "cpu_flags": cpu_flags(info),
        "memory_total_gb": None if memory_total_bytes() is None else round(memory_total_bytes() / 2 ** 30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in ENV_VARS if os.environ.get(k) is not None},
        "threads": threads,
        "load_average_start": load_average(),
    }
    d["peak"] = measure_peak_flops(threads, n=peak_n) if peak else None
    return d

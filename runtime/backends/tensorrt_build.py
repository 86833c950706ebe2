"""Build a TensorRT engine plan from the bundle's prepared ONNX, on the device or on a compiling GPU host.

Plans are specific to the GPU and the TensorRT version, so a bundle usually carries the ONNX plus the build
settings (TensorRTSettings) and the device builds the plan at first start; the compiler builds one only where
TensorRT and a GPU are present. Both sides use this module, so the settings mean the same everywhere.
Written against the TensorRT 10 API (explicit batch, optimisation profile, set_memory_pool_limit,
build_serialized_network); tensorrt and the CUDA bindings are imported only inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..contract.atomic import atomic_write_bytes
from ..contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install 'infantino[tensorrt]' on an NVIDIA host"


@dataclass
class TensorRTSettings:
    """How to build the engine: precision, batch optimisation profile, workspace; stored in the manifest.

    `calibration_data` (int8 only) names an .npy of preprocessed NCHW float32 inputs, relative to the ONNX
    file's folder; `calibration_cache` likewise names where the calibrator keeps its cache.
    """

    precision: str = "fp16"
    input_name: str = "input"
    input_shape: tuple[int, int, int] = (3, 224, 224)  # C, H, W
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    builder_optimization_level: int = 3
    calibration_data: Optional[str] = None
    calibration_cache: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InfantinoError(f"TensorRT precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise InfantinoError(f"TensorRT batch profile needs 1 <= min <= opt <= max, got "
                                 f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.workspace_mb < 16:
            raise InfantinoError(f"TensorRT workspace_mb must be >= 16, got {self.workspace_mb}")
        if len(tuple(self.input_shape)) != 3:
            raise InfantinoError(f"input_shape must be (C, H, W), got {self.input_shape}")
        self.input_shape = tuple(int(v) for v in self.input_shape)

    @property
    def dynamic_batch(self) -> bool:
        return self.min_batch != self.max_batch

    def profile(self) -> dict[str, list[int]]:
        """min/opt/max input shapes of the optimisation profile."""
        return {k: [b, *self.input_shape] for k, b in
                (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch))}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["profile"] = self.profile()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TensorRTSettings":
        """Settings from a manifest dict; unknown keys (e.g. `files`, `profile`, `cache_name`) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})


# ---- the plan cache name: one rule for compiler and device ----------------------------------------------------
def gpu_slug(gpu_name: str) -> str:
    """A file-name-safe form of a GPU name: 'NVIDIA Jetson Orin Nano' -> 'nvidia-jetson-orin-nano'."""
    s = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-")
    return s or "unknown-gpu"


def plan_cache_name(onnx_sha256: str, settings: dict | TensorRTSettings | None = None,
                    tensorrt_version: str = "", gpu_name: str = "", precision: str | None = None) -> str:
    """`{onnx_sha[:16]}-trt{version}-{gpu_slug}-{precision}.plan`: names a plan by everything it depends on.

    A plan built for another ONNX, TensorRT version, GPU or precision therefore never has the same name;
    the runtime's cache also keeps the full settings beside the plan and rebuilds when they differ.
    """
    if precision is None:
        precision = (settings.precision if isinstance(settings, TensorRTSettings)
                     else (settings or {}).get("precision", "fp32"))
    if not re.fullmatch(r"[0-9a-fA-F]{16,}", str(onnx_sha256 or "")):
        raise InfantinoError(f"onnx_sha256 must be a hex digest, got {onnx_sha256!r}")
    version = re.sub(r"[^0-9A-Za-z.]+", "", str(tensorrt_version)) or "unknown"
    return f"{onnx_sha256[:16].lower()}-trt{version}-{gpu_slug(gpu_name)}-{precision}.plan"


# ---- host facts -----------------------------------------------------------------------------------------------
def import_trt():
    """The tensorrt module, or BackendUnavailable naming the extra to install."""
    try:
        import tensorrt as trt  # optional: NVIDIA machines only (infantino[tensorrt])
    except Exception as e:  # ImportError, or OSError when libnvinfer is missing
        raise BackendUnavailable(f"tensorrt: not installed: {INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return trt


def cudart():
    """The CUDA runtime bindings of cuda-python (new or old layout), or BackendUnavailable."""
    try:
        from cuda.bindings import runtime as cudart  # optional (infantino[tensorrt]); cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # optional (infantino[tensorrt]); older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"tensorrt: CUDA Python bindings missing: {INSTALL_HINT}") from e
    return cudart


def check_cuda(result):
    """Unwrap a cuda-python (err, *values) tuple: the value(s), or InfantinoError on a CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise InfantinoError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def build_unavailable_reason() -> Optional[str]:
    """None if this host can build plans (tensorrt importable and a CUDA GPU present), else why not."""
    try:
        import_trt()
        rt = cudart()
    except BackendUnavailable as e:
        return str(e)
    try:
        if check_cuda(rt.cudaGetDeviceCount()) < 1:
            return "tensorrt: CUDA reports no GPU"
    except Exception as e:
        return f"tensorrt: CUDA is not usable here ({e})"
    return None


def host_info(device: int = 0) -> dict[str, str]:
    """{'tensorrt_version', 'gpu_name'} of this host (needs tensorrt and a GPU)."""
    trt = import_trt()
    rt = cudart()
    props = check_cuda(rt.cudaGetDeviceProperties(device))
    name = props.name
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return {"tensorrt_version": trt.__version__, "gpu_name": name.strip("\x00 ")}


# ---- the build ------------------------------------------------------------------------------------------------
def build_plan(onnx_path: str | os.PathLike, settings: dict | TensorRTSettings, logger: Any = None) -> bytes:
    """Parse the ONNX, apply the settings and return the serialized engine (TensorRT 10 API).

    Raises BackendUnavailable without TensorRT, InfantinoError when parsing or building fails (with the
    parser's messages).
    """
    trt = import_trt()
    s = settings if isinstance(settings, TensorRTSettings) else TensorRTSettings.from_dict(settings)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InfantinoError(f"ONNX for TensorRT not found: {onnx_path}")
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:  # implicit batch was removed in 10
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InfantinoError(f"TensorRT cannot parse {onnx_path.name}: " + "; ".join(errors[:5]))
    if network.num_inputs != 1:
        raise InfantinoError(f"{onnx_path.name} has {network.num_inputs} inputs; the extractor has one")
    inp = network.get_input(0)
    if inp.name != s.input_name:
        log.warning("ONNX input is named %r, settings say %r; using the ONNX name", inp.name, s.input_name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(s.workspace_mb) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(s.builder_optimization_level)
    profile = builder.create_optimization_profile()
    p = s.profile()
    profile.set_shape(inp.name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(profile)

    if s.precision in ("fp16", "int8"):
        _set_flag(trt, config, "FP16")  # int8 engines fall back to fp16 (not fp32) where a layer has no int8 kernel
    if s.precision == "int8":
        _set_flag(trt, config, "INT8")
        config.int8_calibrator = make_calibrator(trt, s, onnx_path.parent)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InfantinoError(f"TensorRT failed to build an engine from {onnx_path.name} "
                             f"({s.precision}, batch {s.min_batch}-{s.max_batch}); see the TensorRT log above")
    return bytes(plan)


def _set_flag(trt, config, name: str) -> None:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise InfantinoError(f"this TensorRT ({trt.__version__}) has no BuilderFlag.{name}: build a strongly typed "
                             f"(pre-quantized) ONNX instead, or use precision fp32")
    config.set_flag(flag)


def load_calibration(settings: TensorRTSettings, folder: str | os.PathLike) -> np.ndarray:
    """The int8 calibration inputs (N, C, H, W) float32 named by the settings, checked against the input shape."""
    if not settings.calibration_data:
        raise InfantinoError("int8 TensorRT build needs calibration_data (an .npy beside the ONNX)")
    path = Path(folder) / settings.calibration_data
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InfantinoError(f"cannot read TensorRT calibration data {path}: {e}") from None
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(settings.input_shape):
        raise InfantinoError(f"calibration data {path.name} has shape {data.shape}, expected (N, "
                             f"{', '.join(map(str, settings.input_shape))})")
    return np.ascontiguousarray(data, dtype=np.float32)


def make_calibrator(trt, settings: TensorRTSettings, folder: str | os.PathLike):
    """An entropy calibrator (TensorRT's implicit int8 path) feeding the bundle's calibration inputs."""
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise InfantinoError(f"this TensorRT ({trt.__version__}) has no implicit int8 calibration: "
                             "ship a QDQ-quantized ONNX or build fp16")
    data = load_calibration(settings, folder)
    cache = Path(folder) / settings.calibration_cache if settings.calibration_cache else None
    rt = cudart()
    batch = max(1, min(settings.max_batch, 8))

    class _Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.i = 0
            self.nbytes = batch * int(np.prod(data.shape[1:])) * 4
            self.ptr = check_cuda(rt.cudaMalloc(self.nbytes))

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.i + batch > len(data):
                return None
            chunk = np.ascontiguousarray(data[self.i:self.i + batch])
            self.i += batch
            check_cuda(rt.cudaMemcpy(self.ptr, chunk.ctypes.data, chunk.nbytes,
                                  rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.ptr)]

        def read_calibration_cache(self):
            if cache is not None and cache.is_file():
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, blob):
            if cache is not None:
                try:
                    atomic_write_bytes(cache, bytes(blob))
                except OSError as e:  # a read-only bundle folder: the cache is an optimisation only
                    log.warning("cannot write TensorRT calibration cache %s: %s", cache, e)

    if len(data) < batch:
        raise InfantinoError(f"calibration data has {len(data)} inputs; need at least {batch}")
    return _Calibrator()

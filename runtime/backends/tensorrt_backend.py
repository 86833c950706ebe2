"""TensorRT backend (NVIDIA hosts): builds the engine plan from the bundle's ONNX at first use and caches it.

Plans are specific to the TensorRT version and the GPU, so the cached file's name includes both (rule in
tensorrt_build.plan_cache_name) and a JSON sidecar records what it was built from; a plan that is stale
(other ONNX or settings), foreign (other GPU or TensorRT) or does not deserialise is rebuilt, never loaded.
tensorrt and the CUDA Python bindings are imported only when this backend is used.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from pydantic import Field

from ..cachedir import cache_dir
from ..contract.atomic import atomic_write_bytes, atomic_write_text
from ..contract.errors import BackendUnavailable, InfantinoError
from . import tensorrt_build
from .base import Backend, BackendConfig
from .registry import has_nvidia_gpu, register_backend
from .tensorrt_build import TensorRTSettings, build_unavailable_reason, check_cuda, import_trt
from .tensorrt_build import cudart as load_cudart

log = logging.getLogger(__name__)

INSTALL_HINT = "tensorrt: not installed: pip install 'infantino[tensorrt]' on an NVIDIA host"


class TensorRTConfig(BackendConfig):
    """TensorRT options; build settings come from the bundle's tensorrt artifact and may be overridden here."""

    cache_dir: Optional[str] = Field(default=None, description="where built plans are cached "
                                     "(default: $INFANTINO_CACHE_DIR/tensorrt or ~/.cache/infantino/tensorrt)")
    device: int = Field(default=0, ge=0, description="CUDA device index")
    settings: dict = Field(default_factory=dict, description="overrides of the bundle's build settings "
                           "(e.g. fp16, workspace_mb, max_batch)")


# ---- plan cache: pure logic, testable without TensorRT ------------------------------------------------------
@dataclass(frozen=True)
class PlanKey:
    """What a cached plan must have been built from and for; any difference means rebuild."""

    onnx_sha256: str
    settings: dict
    tensorrt_version: str
    gpu_name: str

    def meta(self) -> dict:
        return {"onnx_sha256": self.onnx_sha256, "settings": self.settings,
                "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name}


class PlanCache:
    """A folder of plans named by tensorrt_build.plan_cache_name, each with a .json sidecar of its PlanKey."""

    def __init__(self, directory: str | os.PathLike, name_rule: Callable[..., str]):
        self.dir = Path(directory)
        self.name_rule = name_rule

    def path(self, key: PlanKey) -> Path:
        return self.dir / self.name_rule(onnx_sha256=key.onnx_sha256, settings=key.settings,
                                         tensorrt_version=key.tensorrt_version, gpu_name=key.gpu_name)

    def get_or_build(self, key: PlanKey, build: Callable[[], bytes], load: Callable[[bytes], Any]) -> tuple[Any, bool]:
        """(engine, rebuilt): load the cached plan if its sidecar matches `key` and it deserialises, else build."""
        path = self.path(key)
        side = path.with_name(path.name + ".json")
        if path.is_file() and side.is_file():
            try:
                meta = json.loads(side.read_text())
            except (OSError, ValueError):
                meta = None
            if meta == key.meta():
                engine = load(path.read_bytes())
                if engine is not None:
                    return engine, False
                log.warning("cached TensorRT plan %s does not deserialise; rebuilding", path)
            else:
                log.warning("cached TensorRT plan %s is stale or foreign (%s); rebuilding", path,
                            _diff(meta, key.meta()))
        plan = build()
        atomic_write_bytes(path, plan)
        atomic_write_text(side, json.dumps(key.meta(), sort_keys=True))
        engine = load(plan)
        if engine is None:
            raise InfantinoError(f"TensorRT could not deserialise the plan it just built ({path})")
        return engine, True


def _diff(old: Optional[dict], new: dict) -> str:
    if not isinstance(old, dict):
        return "no readable metadata"
    return ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v) or "same"


@register_backend
class TensorRTBackend(Backend):
    """Runs a TensorRT engine built from the bundle's ONNX (explicit batch, named I/O, execute_async_v3)."""

    name = "tensorrt"
    formats = ("tensorrt_onnx", "tensorrt_plan", "onnx")
    config_class = TensorRTConfig
    thread_safe = False

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        if not has_nvidia_gpu():
            try:
                import_trt()
            except BackendUnavailable as e:
                return str(e)
            return "tensorrt: no NVIDIA GPU/driver on this host"
        return build_unavailable_reason()

    @classmethod
    def select_artifact(cls, bundle, precision=None):
        """A shipped plan (used if it was built for this host), else the prepared ONNX, else the plain ONNX."""
        arts = bundle.manifest.artifacts
        wanted = [precision] if precision else [bundle.manifest.precision, "fp16", "fp32", "int8"]
        for fmt in ("tensorrt_plan", "tensorrt_onnx"):
            for p in wanted:
                for a in arts:
                    if a.format == fmt and a.precision == p:
                        return a
        return next((a for a in arts if a.format == "onnx" and a.precision == "fp32"), None)

    # ---- building / loading ---------------------------------------------------------------------
    def _settings(self) -> dict:
        """Normalised build settings: the artifact's, else defaults for a plain ONNX, plus config overrides."""
        s = dict(self.artifact.tensorrt or {})
        if not s:
            c, h, w = self.sample_shape
            s = {"input_shape": [c, h, w], "input_name": self.artifact.input_name, "precision": "fp32"}
        s.update(self.config.settings)
        if self.config.precision:
            s["precision"] = self.config.precision
        s.setdefault("precision", self.artifact.precision)
        try:
            return TensorRTSettings.from_dict(s).to_dict()
        except (TypeError, ValueError) as e:
            raise InfantinoError(f"tensorrt: invalid build settings for {self.artifact.file}: {e}") from None

    def _onnx_source(self):
        """(path, sha256) of the ONNX to build from: the artifact itself, or the prepared ONNX beside a plan."""
        if self.artifact.format != "tensorrt_plan":
            return self.bundle.artifact_path(self.artifact), self.artifact.sha256
        arts = self.bundle.manifest.artifacts
        src = (next((a for a in arts if a.format == "tensorrt_onnx" and a.precision == self.artifact.precision), None)
               or next((a for a in arts if a.format == "tensorrt_onnx"), None)
               or next((a for a in arts if a.format == "onnx" and a.precision == "fp32"), None))
        if src is None:
            return None, None
        return self.bundle.artifact_path(src), src.sha256

    def _load(self) -> None:
        trt = import_trt()
        self.cudart = cudart = load_cudart()
        check_cuda(cudart.cudaSetDevice(self.config.device))
        gpu = tensorrt_build.host_info(self.config.device)["gpu_name"]
        self.trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.trt_logger)
        settings = self._settings()

        def load(plan: bytes):
            try:
                return self.runtime.deserialize_cuda_engine(plan)
            except Exception as e:  # a foreign plan may raise instead of returning None
                log.warning("TensorRT refused a plan: %s", e)
                return None

        engine = None
        if self.artifact.format == "tensorrt_plan":  # a plan shipped in the bundle: only if built for this host
            meta = self.artifact.tensorrt or {}
            if meta.get("tensorrt_version") == trt.__version__ and meta.get("gpu_name") == gpu:
                engine = load(self.bundle.artifact_path(self.artifact).read_bytes())
            if engine is None:
                log.warning("bundle plan %s was built for %s / TensorRT %s, this host is %s / %s: rebuilding",
                            self.artifact.file, meta.get("gpu_name"), meta.get("tensorrt_version"), gpu,
                            trt.__version__)
        if engine is None:
            onnx_path, onnx_sha = self._onnx_source()
            if onnx_path is None:
                raise BackendUnavailable("tensorrt: the bundle's plan does not fit this host and it carries no "
                                         "ONNX to rebuild from")
            cache = PlanCache(self.config.cache_dir or cache_dir("tensorrt"), tensorrt_build.plan_cache_name)
            key = PlanKey(onnx_sha, settings, trt.__version__, gpu)
            engine, rebuilt = cache.get_or_build(
                key, lambda: bytes(tensorrt_build.build_plan(onnx_path, settings, logger=self.trt_logger)), load)
            log.info("TensorRT plan %s (%s)", cache.path(key), "built" if rebuilt else "cached")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise InfantinoError(f"tensorrt: engine has inputs {ins} and outputs {outs}; expected one input")
        self.in_name = ins[0]
        self.out_name = self.artifact.output_name if self.artifact.output_name in outs else outs[0]
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.in_name)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.out_name)))
        prof = engine.get_tensor_profile_shape(self.in_name, 0) if hasattr(engine, "get_tensor_profile_shape") else None
        self.max_batch = int(prof[2][0]) if prof else int(settings.get("max_batch", 1))
        self.stream = check_cuda(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def describe(self) -> str:
        return f"max_batch={getattr(self, 'max_batch', '?')}, input={getattr(self, 'in_dtype', '?')}"

    # ---- running ----------------------------------------------------------------------------------
    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check_cuda(self.cudart.cudaFree(ptr))
            ptr = check_cuda(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self.context.set_input_shape(self.in_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        y = np.empty(out_shape, dtype=self.out_dtype)
        d_in = self._device_buffer(self.in_name, x.nbytes)
        d_out = self._device_buffer(self.out_name, y.nbytes)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self.stream))
        self.context.set_tensor_address(self.in_name, d_in)
        self.context.set_tensor_address(self.out_name, d_out)
        if not self.context.execute_async_v3(self.stream):
            raise InfantinoError("tensorrt: execute_async_v3 failed")
        check_cuda(cudart.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, d2h, self.stream))
        check_cuda(cudart.cudaStreamSynchronize(self.stream))
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        b = max(1, self.max_batch)
        return np.concatenate([self._invoke(batch[i:i + b]) for i in range(0, batch.shape[0], b)])

    def _release(self) -> None:
        cudart = getattr(self, "cudart", None)
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None

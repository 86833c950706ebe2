"""onnxruntime backend: the bundle's ONNX on CPU, with the CUDA / TensorRT execution providers when present."""

from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from ..cachedir import cache_dir
from ..contract.errors import BackendUnavailable
from .base import Backend, BackendConfig
from .registry import register_backend

log = logging.getLogger(__name__)

INSTALL_HINT = "onnxruntime: not installed: pip install 'infantino[device]' (or pip install onnxruntime)"
# Preferred order when providers="auto"; Azure and other remote providers are never picked automatically.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeConfig(BackendConfig):
    """onnxruntime session options."""

    providers: list[str] | Literal["auto"] = Field(
        default="auto", description="execution providers in order; auto = TensorRT, CUDA if present, then CPU")
    inter_op_threads: int = Field(default=1, ge=1)
    allow_spinning: bool = Field(default=False, description="session.intra_op.allow_spinning; off so idle "
                                 "threads do not burn a shared CPU")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    trt_cache_dir: Optional[str] = Field(default=None, description="engine cache of the TensorRT EP "
                                         "(default: the runtime cache dir)")


def _ort():
    try:
        import onnxruntime  # optional: in the device extra, not the base install
    except ImportError as e:
        raise BackendUnavailable(INSTALL_HINT) from e
    return onnxruntime


@register_backend
class OnnxRuntimeBackend(Backend):
    """Runs extractor*.onnx with onnxruntime's InferenceSession (thread-safe run)."""

    name = "onnxruntime"
    formats = ("onnx",)
    config_class = OnnxRuntimeConfig
    thread_safe = True

    @classmethod
    def import_library(cls):
        return _ort()

    def _providers(self, ort) -> list:
        cfg: OnnxRuntimeConfig = self.config
        have = ort.get_available_providers()
        if cfg.providers == "auto":
            names = [p for p in AUTO_PROVIDERS if p in have]
        else:
            missing = [p for p in cfg.providers if p not in have]
            if missing:
                raise BackendUnavailable(f"onnxruntime: provider(s) {', '.join(missing)} not available here "
                                         f"(available: {', '.join(have)})")
            names = list(cfg.providers)
        out = []
        for p in names:
            if p == "TensorrtExecutionProvider":
                path = cfg.trt_cache_dir or str(cache_dir("ort-trt"))
                out.append((p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": path,
                                "trt_fp16_enable": self.artifact.precision == "fp16"}))
            else:
                out.append(p)
        return out

    def _load(self) -> None:
        ort = _ort()
        cfg: OnnxRuntimeConfig = self.config
        so = ort.SessionOptions()
        if cfg.threads:
            so.intra_op_num_threads = cfg.threads
        so.inter_op_num_threads = cfg.inter_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[cfg.graph_optimization]
        path = str(self.bundle.artifact_path(self.artifact))
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=self._providers(ort))
        except Exception as e:  # onnxruntime raises its own exception types
            if isinstance(e, BackendUnavailable):
                raise
            raise BackendUnavailable(f"onnxruntime cannot load {self.artifact.file}: {e}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        outs = [o.name for o in self.session.get_outputs()]
        self.output_name = self.artifact.output_name if self.artifact.output_name in outs else outs[0]
        batch_dim = inp.shape[0] if inp.shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def describe(self) -> str:
        return f"providers={self.session.get_providers()}, threads={self.config.threads or 'default'}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(self.input_dtype, copy=False)
        if self.fixed_batch is None or self.fixed_batch == x.shape[0]:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        # A fixed-batch export: run in chunks of its batch size, padding the last chunk.
        b, outs = self.fixed_batch, []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n])
        return np.concatenate(outs)

    def _release(self) -> None:
        self.session = None

"""LiteRT (TFLite) backend: ai-edge-litert's Interpreter with XNNPACK on CPU; fp32, fp16 and int8 models.

The batch size follows the input (resize_tensor_input); models whose batch cannot be resized run in chunks.
Models with quantized input/output (int8/uint8) are fed and read through their scale and zero point.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field

from ..contract.errors import BackendUnavailable
from .base import Backend, BackendConfig
from .registry import register_backend

log = logging.getLogger(__name__)

INSTALL_HINT = "tflite: not installed: pip install 'infantino[device]' (or pip install ai-edge-litert)"


class TFLiteConfig(BackendConfig):
    """LiteRT interpreter options."""

    xnnpack: bool = Field(default=True, description="use the XNNPACK CPU delegate (LiteRT's default delegate)")


def _litert():
    try:
        from ai_edge_litert import interpreter  # optional: in the device extra, not the base install
    except ImportError as e:
        raise BackendUnavailable(INSTALL_HINT) from e
    return interpreter


@register_backend
class TFLiteBackend(Backend):
    """Runs extractor_<precision>.tflite with ai-edge-litert (one interpreter; calls are serialised)."""

    name = "tflite"
    formats = ("tflite",)
    config_class = TFLiteConfig
    thread_safe = False

    @classmethod
    def import_library(cls):
        return _litert()

    def _load(self) -> None:
        lit = _litert()
        cfg: TFLiteConfig = self.config
        resolver = (lit.OpResolverType.AUTO if cfg.xnnpack
                    else lit.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        path = str(self.bundle.artifact_path(self.artifact))
        try:
            self.interp = lit.Interpreter(model_path=path, num_threads=cfg.threads,
                                          experimental_op_resolver_type=resolver)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendUnavailable(f"tflite cannot load {self.artifact.file}: {e}") from None
        inputs = self.interp.get_input_details()
        if len(inputs) != 1:
            raise BackendUnavailable(f"tflite: {self.artifact.file} has {len(inputs)} inputs, expected 1")
        self.inp = inputs[0]
        outs = self.interp.get_output_details()
        by_name = [o for o in outs if o["name"] == self.artifact.output_name]
        by_size = [o for o in outs if int(o["shape"][-1]) == self.embedding_dim]
        self.out = (by_name or by_size or outs)[0]
        model_sample = tuple(int(d) for d in self.inp["shape"][1:])
        if model_sample != self.sample_shape:
            raise BackendUnavailable(
                f"tflite: {self.artifact.file} takes samples of shape {model_sample} but the manifest says "
                f"{self.artifact.layout} {self.sample_shape}")
        self.batch = int(self.inp["shape"][0])
        self.resizable = True
        self.in_dtype = np.dtype(self.inp["dtype"])
        self.in_q = self.inp.get("quantization") or (0.0, 0)

    def describe(self) -> str:
        return (f"xnnpack={self.config.xnnpack}, threads={self.config.threads or 'default'}, "
                f"input={self.in_dtype}{' (quantized)' if self.in_dtype.kind in 'iu' else ''}")

    def _resize(self, n: int) -> bool:
        if n == self.batch:
            return True
        if not self.resizable:
            return False
        try:
            self.interp.resize_tensor_input(self.inp["index"], [n, *self.sample_shape], strict=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            log.warning("tflite: %s cannot change batch size (%s); running in chunks of %d",
                        self.artifact.file, e, self.batch)
            self.resizable = False
            self.interp.resize_tensor_input(self.inp["index"], [self.batch, *self.sample_shape], strict=False)
            self.interp.allocate_tensors()
            return False
        self.batch = n
        self.out = next(o for o in self.interp.get_output_details() if o["index"] == self.out["index"])
        return True

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if self.in_dtype.kind in "iu":
            scale, zero = self.in_q
            info = np.iinfo(self.in_dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.in_dtype)
        return x.astype(self.in_dtype, copy=False)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], self._quantize(x))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if np.dtype(self.out["dtype"]).kind in "iu":
            scale, zero = self.out.get("quantization") or (0.0, 0)
            y = (y.astype(np.float32) - zero) * scale
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if self._resize(n):
            return self._invoke(batch)
        b, outs = self.batch, []
        for i in range(0, n, b):
            chunk = batch[i:i + b]
            k = chunk.shape[0]
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k,) + chunk.shape[1:], chunk.dtype)])
            outs.append(np.array(self._invoke(chunk)[:k]))
        return np.concatenate(outs)

    def _release(self) -> None:
        self.interp = None

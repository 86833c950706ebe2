"""Model FLOPs per image, counted from the ONNX graph (or with torch's FlopCounterMode when torch is present).

Convention (as FlopCounterMode and most papers): 1 multiply-accumulate = 2 FLOPs, and only the dense
arithmetic is counted: Conv, ConvTranspose, Gemm, MatMul (elementwise ops, activations, pooling and BN are a
few percent of a CNN's work and are left out). The ONNX count fixes the batch dimension to 1, runs onnx shape
inference, and reads each node's weight and output shapes:
  Conv: prod(output shape) x (C_in / groups) x k_h x k_w MACs;  Gemm/MatMul: prod(output shape) x K MACs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def onnx_flops(path: str | Path, batch: int = 1) -> dict:
    """FLOPs per image of an ONNX model: {"flops", "macs", "by_op", "uncounted", "method"}."""
    try:
        # heavy, optional: onnx (compile extra):
        import onnx
        from onnx import shape_inference
    except ImportError as e:
        raise BackendUnavailable("counting FLOPs from ONNX needs the onnx package: pip install onnx") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as e:  # onnx raises InferenceError and others
        raise InfantinoError(f"ONNX shape inference failed on {path}: {e}") from None
    shapes: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value else None for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs_by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        m = _node_macs(node, shapes)
        if m is None:
            uncounted.append(node.name or node.op_type)
            continue
        macs_by_op[node.op_type] = macs_by_op.get(node.op_type, 0) + m
    macs = sum(macs_by_op.values()) / batch
    if uncounted:
        log.warning("%d nodes of %s had unknown shapes and were not counted", len(uncounted), path.name)
    return {"flops": 2.0 * macs, "macs": macs, "by_op": {k: 2.0 * v / batch for k, v in macs_by_op.items()},
            "uncounted": uncounted, "method": "onnx shape inference (Conv/ConvTranspose/Gemm/MatMul, 2 FLOPs/MAC)"}


def _known(shape) -> bool:
    return shape is not None and len(shape) > 0 and all(d is not None and d > 0 for d in shape)


def _node_macs(node, shapes: dict) -> int | None:
    out = shapes.get(node.output[0])
    if node.op_type in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        if not _known(w):
            return None
        if node.op_type == "Conv":
            if not _known(out):
                return None
            return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
        x = shapes.get(node.input[0])  # ConvTranspose: every input pixel scatters into C_out/g x k x k
        if not _known(x):
            return None
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    a = shapes.get(node.input[0])
    if not (_known(out) and _known(a)):
        return None
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    else:
        k = a[-1]
    return int(np.prod(out, dtype=np.int64) * k)


def torch_flops(model, input_shape: tuple[int, ...]) -> dict:
    """FLOPs per image with torch.utils.flop_counter.FlopCounterMode on one forward pass of zeros."""
    # heavy: torch, ~1.3 s to import (train extra):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(input_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    total = counter.get_total_flops() / input_shape[0]
    by_op = {str(k): v / input_shape[0] for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": float(total), "macs": total / 2.0, "by_op": by_op, "uncounted": [],
            "method": "torch FlopCounterMode (2 FLOPs/MAC)"}

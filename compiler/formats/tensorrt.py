"""TensorRT: the ONNX prepared for TensorRT plus its build settings; the serialized plan where this host can.

A plan only runs on the GPU model and TensorRT version it was built with, so the bundle always carries the
prepared ONNX (tensorrt/extractor.onnx) and the settings (precision, batch optimisation profile, workspace,
int8 calibration inputs); the device builds the plan at first start and caches it under
runtime.backends.tensorrt_build.plan_cache_name. With `tensorrt` importable and a GPU here, the compiler
also builds the plan and records the TensorRT version and GPU name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from infantino.runtime.backends import tensorrt_build as tb
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.layout import REFERENCE_FILE

from . import Artifact, ExportContext, Exporter, Timer, option, register_format

log = logging.getLogger(__name__)

TRT_DIR = "tensorrt"
PREPARED_ONNX = f"{TRT_DIR}/extractor.onnx"
CALIB_FILE = "calibration.npy"  # relative to the prepared ONNX's folder (what build_plan resolves)


def _batch_profile(value: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise ValueError(f"--trt-batch wants MIN,OPT,MAX integers, got {value!r}") from None
    if len(parts) == 1:
        parts = (parts[0],) * 3
    if len(parts) != 3 or not (1 <= parts[0] <= parts[1] <= parts[2]):
        raise ValueError(f"--trt-batch wants 1 <= MIN <= OPT <= MAX, got {value!r}")
    return parts


@dataclass
class TensorRTOptions:
    """Engine build settings shipped with the prepared ONNX."""

    workspace_mb: int = option(1024, "--trt-workspace", "TensorRT builder workspace in MiB", type=int)
    batch: str = option("1,1,8", "--trt-batch", "optimisation profile for the batch axis: MIN,OPT,MAX "
                        "(one number = static batch)")
    build: str = option("auto", "--trt-build", "build the plan here: auto (if tensorrt and a GPU are present), "
                        "never (device builds it at first start)", choices=("auto", "never"))
    optimization_level: int = option(3, "--trt-opt-level", "builder optimisation level 0-5", type=int)


@register_format("tensorrt", suffix=".plan", description="TensorRT: prepared ONNX + build settings (+ plan on a GPU host)",
                 precisions=("fp32", "fp16", "int8"), layouts=("NCHW",), options=TensorRTOptions, needs_gpu=True,
                 requires=("onnx",), extra="compile")
class TensorRTExporter(Exporter):
    """Writes tensorrt/extractor.onnx, its settings per precision, and tensorrt/extractor_<precision>.plan if it can."""

    def check(self, precisions, layout):
        super().check(precisions, layout)
        _batch_profile(self.options.batch)
        if not 0 <= self.options.optimization_level <= 5:
            raise ValueError("--trt-opt-level must be within 0-5")
        tb.TensorRTSettings(workspace_mb=self.options.workspace_mb)  # validates

    def export(self, ctx: ExportContext, precision: str, layout: str) -> list[Artifact]:
        with Timer() as t:
            onnx_path = ctx.bundle_dir / PREPARED_ONNX
            if not onnx_path.is_file():
                prepare_onnx(ctx.onnx_path, onnx_path)
            onnx_sha = _sha(onnx_path)
            lo, opt, hi = _batch_profile(self.options.batch)
            settings = tb.TensorRTSettings(precision=precision, input_name="input", input_shape=ctx.input_shape,
                                           min_batch=lo, opt_batch=opt, max_batch=hi,
                                           workspace_mb=self.options.workspace_mb,
                                           builder_optimization_level=self.options.optimization_level)
            files = []
            if precision == "int8":
                calib_path = onnx_path.parent / CALIB_FILE
                if not calib_path.is_file():
                    if len(ctx.calib) < settings.max_batch:
                        raise InfantinoError(f"TensorRT int8 needs at least {settings.max_batch} calibration images")
                    np.save(calib_path, np.ascontiguousarray(ctx.calib, dtype=np.float32))
                settings.calibration_data = CALIB_FILE
                files.append({"file": f"{TRT_DIR}/{CALIB_FILE}", "sha256": _sha(calib_path)})
            meta = settings.to_dict()
            meta.update(onnx_sha256=onnx_sha, files=files,
                        cache_name_rule="{onnx_sha256[:16]}-trt{tensorrt_version}-{gpu_slug}-{precision}.plan")
            prepared = Artifact(file=PREPARED_ONNX, format="tensorrt_onnx", precision=precision, layout="NCHW",
                                converter="onnx (prepared for TensorRT: shapes inferred, batch profile)",
                                input_name="input", output_name="embedding", dynamic_batch=settings.dynamic_batch,
                                tensorrt=meta)
            arts = [prepared]
            reason = tb.build_unavailable_reason() if self.options.build == "auto" else "--trt-build never"
            if reason is None:
                plan_file = f"{TRT_DIR}/extractor_{precision}.plan"
                plan = tb.build_plan(onnx_path, settings)
                (ctx.bundle_dir / plan_file).write_bytes(plan)
                host = tb.host_info()
                plan_meta = dict(meta, **host, cache_name=tb.plan_cache_name(onnx_sha, settings, **host))
                arts.append(Artifact(file=plan_file, format="tensorrt_plan", precision=precision, layout="NCHW",
                                     converter=f"TensorRT {host['tensorrt_version']} on {host['gpu_name']}",
                                     dynamic_batch=settings.dynamic_batch, tensorrt=plan_meta,
                                     parity_backend="tensorrt"))
                prepared.parity_backend = None
                prepared.parity_note = "checked through the plan built from it"
            else:
                prepared.parity_backend = "onnxruntime"
                prepared.judge_precision = "fp32"  # onnxruntime runs the prepared ONNX at fp32
                prepared.parity_note = (f"no plan built here ({reason}); the prepared ONNX was checked in onnxruntime "
                                        f"at fp32, the {precision} engine is built and checked on the device against "
                                        f"{REFERENCE_FILE}")
        for a in arts:
            a.seconds = t.seconds / len(arts)
        return arts


    def toolchain_info(self) -> dict[str, str]:
        """TensorRT version and GPU when a plan can be built here."""
        return tb.host_info() if tb.build_unavailable_reason() is None else {}


def prepare_onnx(src, dst) -> None:
    """Copy the fp32 ONNX for TensorRT: static C/H/W with inferred shapes, dynamic batch kept, metadata kept."""
    import onnx  # heavy, optional: compile extra

    model = onnx.load(str(src))
    inp = model.graph.input[0].type.tensor_type.shape.dim
    if any(not d.dim_value for d in list(inp)[1:]):
        raise InfantinoError("TensorRT needs static C/H/W input dimensions; re-export with a fixed --img-size")
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

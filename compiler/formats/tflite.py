"""TFLite (LiteRT): fp32, fp16 and int8 from litert-torch (no TensorFlow) or from the ONNX via onnx2tf (`[tf]`).

litert-torch converts the PyTorch module directly; fp16 stores the weights as float16 (ai-edge-quantizer float
casting) and int8 is calibrated either with litert-torch's PT2E quantizer or with ai-edge-quantizer's static
int8 recipe. The input layout is NHWC by default (a transposing wrapper in front of the network), which
XNNPACK runs without layout conversions; NCHW is available. onnx2tf converts the bundle's ONNX instead (the
ONNX stays the single source); it runs in a subprocess, on a copy of the ONNX, offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError

from . import Artifact, ExportContext, Exporter, Timer, option, register_format

log = logging.getLogger(__name__)

CONVERTERS = ("litert-torch", "onnx2tf")
INT8_QUANTIZERS = ("pt2e", "ai-edge-quantizer")
# Chosen by measurement (docs/compiler.md): see DEFAULT_* comments there.
DEFAULT_CONVERTER = "litert-torch"
DEFAULT_INT8 = "pt2e"
_REQUIRES = {"litert-torch": ("torch", "litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
             "onnx2tf": ("onnx2tf", "tensorflow", "ai_edge_litert")}
_EXTRA = {"litert-torch": "compile", "onnx2tf": "tf"}


def tflite_file(precision: str) -> str:
    return f"extractor_{precision}.tflite"


@dataclass
class TFLiteOptions:
    """How the TFLite artifacts are made."""

    converter: str = option(DEFAULT_CONVERTER, "--tflite-converter",
                            "litert-torch (PyTorch -> TFLite, no TensorFlow) or onnx2tf (ONNX -> TFLite, needs "
                            "the [tf] extra)", choices=CONVERTERS)
    int8_quantizer: str = option(DEFAULT_INT8, "--int8-quantizer",
                                 "litert-torch int8 recipe: pt2e (PyTorch PT2E, keeps SiLU in float) or "
                                 "ai-edge-quantizer (static int8 on the fp32 .tflite, fully integer)",
                                 choices=INT8_QUANTIZERS)
    layout: str = option("auto", "--tflite-layout", "input layout of the .tflite files: auto (the target's, NHWC) "
                         "or NHWC / NCHW", choices=("auto", "NHWC", "NCHW"))


@register_format("tflite", suffix=".tflite", description="LiteRT fp32/fp16/int8, batch 1 (XNNPACK on ARM/x86)",
                 precisions=("fp32", "fp16", "int8"), layouts=("NHWC", "NCHW"), options=TFLiteOptions,
                 requires=(), extra="compile")
class TFLiteExporter(Exporter):
    """Writes extractor_<precision>.tflite for each precision."""

    def __init__(self, options):
        super().__init__(options)
        self._fp32: Optional[Path] = None  # litert-torch fp32 model, reused for fp16 / ai-edge-quantizer int8
        self._onnx2tf_out: Optional[Path] = None

    def unavailable_reason(self) -> Optional[str]:
        conv = self.options.converter
        missing = []
        for mod in _REQUIRES[conv]:
            try:
                if importlib.util.find_spec(mod) is None:
                    missing.append(mod)
            except (ImportError, ValueError):
                missing.append(mod)
        if missing:
            alt = " (or use --tflite-converter litert-torch)" if conv == "onnx2tf" else " (or leave tflite out with --formats)"
            return f"TFLite via {conv} needs {', '.join(missing)}: pip install 'infantino[{_EXTRA[conv]}]'{alt}"
        return None

    def toolchain_dists(self) -> list[str]:
        """TensorFlow and onnx2tf when they convert."""
        return ["tensorflow", "tensorflow-cpu", "onnx2tf"] if self.options.converter == "onnx2tf" else []

    def check(self, precisions, layout):
        super().check(precisions, layout)
        if self.options.converter == "onnx2tf" and layout != "NHWC":
            raise InfantinoError("onnx2tf produces NHWC models only; use --tflite-layout NHWC or litert-torch")

    def export(self, ctx: ExportContext, precision: str, layout: str) -> list[Artifact]:
        with Timer() as t:
            if self.options.converter == "onnx2tf":
                path, converter = self._onnx2tf(ctx, precision)
            else:
                path, converter = self._litert(ctx, precision, layout)
            dest = ctx.bundle_dir / tflite_file(precision)
            shutil.copyfile(path, dest)
            in_name, out_name = _io_names(dest)
        return [Artifact(file=dest.name, format="tflite", precision=precision, layout=layout, converter=converter,
                         seconds=t.seconds, input_name=in_name, output_name=out_name, dynamic_batch=False,
                         parity_backend="tflite")]

    # ---- litert-torch ----------------------------------------------------------------------------
    def _litert(self, ctx: ExportContext, precision: str, layout: str) -> tuple[Path, str]:
        _quiet_litert()
        module = _layout_module(ctx.model, layout)
        sample = (_torch_sample(ctx, layout),)
        needs_fp32 = precision in ("fp32", "fp16") or self.options.int8_quantizer == "ai-edge-quantizer"
        if needs_fp32 and self._fp32 is None:  # fp16 and ai-edge-quantizer int8 start from the fp32 model
            self._fp32 = self._litert_fp32(ctx, module, sample)
        if precision == "fp32":
            return self._fp32, "litert-torch"
        if precision == "fp16":
            out = ctx.work_dir / "tflite_fp16.tflite"
            _aeq_fp16(self._fp32, out)
            return out, "litert-torch + ai-edge-quantizer (fp16 weights)"
        if self.options.int8_quantizer == "pt2e":
            out = ctx.work_dir / "tflite_int8_pt2e.tflite"
            _pt2e_int8(module, sample, _calib_in_layout(ctx.calib, layout), out)
            return out, "litert-torch PT2E int8 (per-channel weights, histogram-calibrated activations)"
        out = ctx.work_dir / "tflite_int8_aeq.tflite"
        _aeq_int8(self._fp32, _calib_in_layout(ctx.calib, layout), out)
        return out, "litert-torch + ai-edge-quantizer static int8 (float I/O)"

    def _litert_fp32(self, ctx, module, sample) -> Path:
        import litert_torch  # heavy, optional: litert-torch, ~4 s to import (compile extra)

        out = ctx.work_dir / "tflite_fp32.tflite"
        edge = litert_torch.convert(module, sample)
        edge.export(str(out))
        return out

    # ---- onnx2tf -------------------------------------------------------------------------------
    def _onnx2tf(self, ctx: ExportContext, precision: str) -> tuple[Path, str]:
        if self._onnx2tf_out is None:
            self._onnx2tf_out = run_onnx2tf(ctx.onnx_path, ctx.work_dir / "onnx2tf", ctx.calib,
                                            int8="int8" in self.precisions)
        stem = "extractor"
        name = {"fp32": f"{stem}_float32.tflite", "fp16": f"{stem}_float16.tflite",
                "int8": f"{stem}_integer_quant.tflite"}[precision]  # integer_quant keeps float32 I/O
        path = self._onnx2tf_out / name
        if not path.is_file():
            have = sorted(p.name for p in self._onnx2tf_out.glob("*.tflite"))
            raise InfantinoError(f"onnx2tf did not write {name} (it wrote: {', '.join(have) or 'nothing'})")
        return path, "onnx2tf (from the bundle's ONNX)"

    def close(self) -> None:
        self._fp32 = None
        self._onnx2tf_out = None


# ---- helpers: layouts ------------------------------------------------------------------------------------
def _layout_module(model, layout: str):
    """The module to convert: NHWC input means a transpose in front (folded into the first conv by LiteRT)."""
    if layout == "NCHW":
        return model
    import torch  # heavy: torch, ~1.3 s to import (train/compile extras)

    class NHWCInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    return NHWCInput(model).eval()


def _calib_in_layout(calib: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(calib.transpose(0, 2, 3, 1)) if layout == "NHWC" else calib


def _torch_sample(ctx: ExportContext, layout: str):
    import torch  # heavy: torch, ~1.3 s to import (train/compile extras)

    x = ctx.calib[:1] if len(ctx.calib) else np.zeros((1, *ctx.input_shape), np.float32)
    return torch.from_numpy(_calib_in_layout(np.ascontiguousarray(x, dtype=np.float32), layout).copy())


def _io_names(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter  # optional: LiteRT (device/compile extras)

    it = Interpreter(model_path=str(path))
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise InfantinoError(f"{path.name}: expected one input and one output, got {len(ins)} / {len(outs)}")
    return ins[0]["name"], outs[0]["name"]


def _quiet_litert() -> None:
    """litert-torch prints a progress tree to stdout unless told otherwise; our own progress display covers it."""
    if log.getEffectiveLevel() > logging.DEBUG:
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")


@contextlib.contextmanager
def _captured_prints():
    """ai-edge-quantizer print()s its summary; send it to the debug log instead of the user's terminal."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("%s", buf.getvalue().strip())


# ---- helpers: quantisation ---------------------------------------------------------------------------------
def _aeq_fp16(fp32: Path, out: Path) -> None:
    """fp16 weights (float casting): half the size; XNNPACK runs them in fp16 where the CPU can, else fp32."""
    # optional: ai-edge-quantizer (compile extra), ~0.4 s to import:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(str(fp32))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=AlgorithmName.FLOAT_CASTING)
    with _captured_prints():
        q.quantize().export_model(str(out), overwrite=True)


def _aeq_int8(fp32: Path, calib: np.ndarray, out: Path) -> None:
    """Static int8 (int8 weights per channel, int8 activations) with float32 input and output kept."""
    # optional: LiteRT and ai-edge-quantizer (compile extra; the quantizer takes ~0.4 s to import):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if len(calib) == 0:
        raise InfantinoError("int8 needs calibration images")
    q = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float I/O
        q.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    sigs = Interpreter(model_path=str(fp32)).get_signature_list()
    sig_name = next(iter(sigs))
    in_key = sigs[sig_name]["inputs"][0]
    data = {sig_name: [{in_key: calib[i:i + 1]} for i in range(len(calib))]}
    with _captured_prints():
        q.quantize(q.calibrate(data)).export_model(str(out), overwrite=True)


def _pt2e_int8(module, sample, calib: np.ndarray, out: Path) -> None:
    """PT2E: export, insert observers, calibrate on the images, convert; litert-torch lowers the QDQ graph."""
    # heavy, optional (compile extra; litert-torch ~4 s, torch ~1.3 s to import):
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    if len(calib) == 0:
        raise InfantinoError("int8 needs calibration images")
    quant = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    gm = torch.export.export(module, sample).module()
    gm = quantize_pt2e.prepare_pt2e(gm, quant)
    with torch.no_grad():
        for i in range(len(calib)):
            gm(torch.from_numpy(calib[i:i + 1].copy()))
    gm = quantize_pt2e.convert_pt2e(gm, fold_quantize=False)
    try:  # an exported GraphModule cannot .eval(); this switches its BN/dropout ops to inference behaviour
        from torchao.quantization.pt2e import move_exported_model_to_eval  # heavy, optional (as above)
    except ImportError:  # pragma: no cover - older torchao
        from torch.ao.quantization import move_exported_model_to_eval  # heavy, optional (as above)
    gm = move_exported_model_to_eval(gm)
    gm.training = False  # the flag litert-torch checks (exported modules refuse .eval())
    edge = litert_torch.convert(gm, sample, quant_config=QuantConfig(pt2e_quantizer=quant))
    edge.export(str(out))


# ---- onnx2tf ----------------------------------------------------------------------------------------------
ONNX2TF_CALIB_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"

_ONNX2TF_SCRIPT = textwrap.dedent("""
    import inspect, json, sys
    import numpy as np
    args = json.loads(sys.argv[1])
    calib = np.load(args["calib"])
    # onnx2tf fetches a sample calibration file from the internet; give it ours instead (stays offline).
    def _offline_sample():
        return calib
    import onnx2tf
    for name, mod in list(sys.modules.items()):
        if name.startswith("onnx2tf") and hasattr(mod, "download_test_image_data"):
            mod.download_test_image_data = _offline_sample
    kwargs = dict(
        input_onnx_file_path=args["onnx"], output_folder_path=args["out"], not_use_onnxsim=True,
        batch_size=1, copy_onnx_input_output_names_to_tflite=True, non_verbose=True, verbosity="error",
        output_integer_quantized_tflite=args["int8"], quant_type="per-channel",
        custom_input_op_name_np_data_path=[[args["input_name"], args["calib"], args["mean"], args["std"]]],
        output_signaturedefs=args["int8"],  # int8 calibration reloads the saved model's signature
    )
    accepted = inspect.signature(onnx2tf.convert).parameters
    onnx2tf.convert(**{k: v for k, v in kwargs.items() if k in accepted})
""")


def run_onnx2tf(onnx_path: Path, out_dir: Path, calib_nchw: np.ndarray, int8: bool = True,
                input_name: str = "input", timeout: float = 3600) -> Path:
    """Run onnx2tf in a subprocess on a copy of the ONNX, offline, in its own working folder; return out_dir.

    Traps handled: onnx2tf rewrites its input file (we give it a copy), downloads a calibration sample at
    start (a valid local file is placed in its working folder and its download function is replaced; proxies
    point nowhere so any other fetch fails fast), and calls the onnxsim CLI (disabled: our ONNX is already
    simplified by onnxslim). One call writes float32, float16 and (with calibration data) int8 models.
    """
    try:
        if importlib.util.find_spec("onnx2tf") is None or importlib.util.find_spec("tensorflow") is None:
            raise ImportError
    except ImportError:
        raise BackendUnavailable("onnx2tf/tensorflow missing: pip install 'infantino[tf]'") from None
    work = out_dir.parent / "onnx2tf-work"
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_copy = work / "extractor.onnx"
    shutil.copyfile(onnx_path, onnx_copy)
    calib = np.ascontiguousarray(calib_nchw.transpose(0, 2, 3, 1), dtype=np.float32)  # onnx2tf wants NHWC
    if len(calib) == 0:
        calib = np.zeros((1, *calib_nchw.shape[2:], calib_nchw.shape[1]), np.float32)
    calib_path = work / "calibration.npy"
    np.save(calib_path, calib)
    np.save(work / ONNX2TF_CALIB_FILE, calib)  # what onnx2tf looks for in its working folder
    c = calib.shape[-1]
    args = {"onnx": str(onnx_copy), "out": str(out_dir), "calib": str(calib_path), "int8": bool(int8),
            "input_name": input_name,
            # our calibration data is already normalised: onnx2tf's (x - mean) / std must be the identity
            "mean": np.zeros((1, 1, 1, c)).tolist(), "std": np.ones((1, 1, 1, c)).tolist()}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    log.info("running onnx2tf (subprocess, cwd %s)", work)
    try:
        proc = subprocess.run([sys.executable, "-c", _ONNX2TF_SCRIPT, json.dumps(args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InfantinoError(f"onnx2tf did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise InfantinoError(f"onnx2tf failed (exit {proc.returncode}):\n{tail}")
    return out_dir

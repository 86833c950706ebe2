"""int8 study (issue 15): build fp32/int8 artifacts of one extractor at one size: ONNX fp32 + ORT int8 variants, TFLite fp32 +
PT2E int8 + ai-edge-quantizer int8 (float I/O and int8 I/O). Study code, not part of the package; `mini_xception`
is the demo checkpoint /work/main/demo-out/runs/fit/extractor.pt (docs/benchmarks.md, "int8 on this CPU")."""
import os, shutil, logging, json
from pathlib import Path
import numpy as np, torch
from infantino.trainer.extractor import ExtractorConfig, build_extractor, load_extractor
from infantino.runtime.contract.preprocess import preprocess
from infantino.trainer.synth import synth_arrays
from infantino.trainer.realface_guard import real_face_split
from infantino.compiler.formats import ExportContext, create_exporter
from infantino.compiler.formats import tflite as tfl
logging.basicConfig(level=logging.INFO)
import argparse
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("model", help="mini_xception (the demo checkpoint), a trainer extractor.pt, or a timm name (random "
                "init, BatchNorm settled on faces)")
ap.add_argument("px", type=int, help="input size in pixels")
ap.add_argument("out", help="folder to write the artifacts into")
ap.add_argument("only", nargs="?", help="comma list of parts (e.g. onnx alone: 'none'); default all")
a = ap.parse_args()
name, px, out = a.model, a.px, Path(a.out)
only = a.only.split(",") if a.only else None
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
if name == "mini_xception" or name.endswith(".pt"):
    model, cfg = load_extractor("/work/main/demo-out/runs/fit/extractor.pt" if name == "mini_xception" else name)
    spec = cfg.spec.model_copy(update={"input_size": (px, px)})
else:
    cfg = ExtractorConfig(backbone=name, img_size=px)
    torch.manual_seed(0)
    model = build_extractor(cfg)
    spec = cfg.spec.model_copy(update={"input_size": (px, px)})
syn = synth_arrays(64, domain="adult", seed=2, size=96, difficulty="medium")[0] + \
    synth_arrays(64, domain="infant", seed=3, size=96, difficulty="medium")[0]
real = real_face_split().distil.images[::2]
calib = preprocess(list(syn) + list(real), spec, "NCHW").astype(np.float32)
if not (name == "mini_xception" or name.endswith(".pt")):  # settle BatchNorm statistics on faces (real activation ranges, no denormals)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats(); m.momentum = None
    settle, _ = synth_arrays(256, domain="adult", seed=5, size=96, difficulty="medium")
    xs = torch.from_numpy(preprocess(settle, spec, "NCHW").astype(np.float32))
    model.train()
    with torch.no_grad():
        for i in range(0, len(xs), 32):
            model(xs[i:i + 32])
    model.eval()
    torch.save(model.state_dict(), out / "state.pt")
np.save(out / "calib.npy", calib)
json.dump(spec.model_dump(mode="json"), open(out / "spec.json", "w"))
work = out / "work"; work.mkdir(exist_ok=True)
ctx = ExportContext(model=model, input_shape=tuple(calib.shape[1:]), bundle_dir=out, work_dir=work, calib=calib)
create_exporter("onnx").export(ctx, "fp32", "NCHW")
def want(k): return only is None or k in only
if want("tflite"):
    e = create_exporter("tflite", int8_quantizer="ai-edge-quantizer")
    e.precisions = ["fp32", "int8"]
    e.export(ctx, "fp32", "NHWC")
    shutil.move(out / "extractor_int8.tflite", out / "x") if (out / "extractor_int8.tflite").exists() else None
    e.export(ctx, "int8", "NHWC"); os.replace(out / "extractor_int8.tflite", out / "tfl_int8_aeq.tflite")
    # ai-edge-quantizer with int8 input/output (fully integer graph, the input quantize is the caller's)
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    q = quantizer.Quantizer(str(work / "tflite_fp32.tflite"), recipe.static_wi8_ai8())
    sigs = Interpreter(model_path=str(work / "tflite_fp32.tflite")).get_signature_list()
    sig = next(iter(sigs)); key = sigs[sig]["inputs"][0]
    cal = tfl._calib_in_layout(calib, "NHWC")
    q.quantize(q.calibrate({sig: [{key: cal[i:i + 1]} for i in range(len(cal))]})).export_model(
        str(out / "tfl_int8_aeq_io8.tflite"), overwrite=True)
    e2 = create_exporter("tflite", int8_quantizer="pt2e"); e2.precisions = ["int8"]
    e2.export(ctx, "int8", "NHWC"); os.replace(out / "extractor_int8.tflite", out / "tfl_int8_pt2e.tflite")
    os.replace(out / "extractor_fp32.tflite", out / "tfl_fp32.tflite")
shutil.rmtree(work)
print("built", sorted(p.name for p in out.iterdir()))

"""int8 study (issue 15): ORT int8 variants + TFLite variants of one built folder: batch-1 interleaved timing (threads 1 and 2,
R rounds) and head top-1 agreement with ORT fp32 on real (104 held-out) and synthetic (350) faces."""
import os, time, json, gc
from pathlib import Path
import numpy as np, onnxruntime as ort
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader
from onnxruntime.quantization.shape_inference import quant_pre_process
from ai_edge_litert.interpreter import Interpreter
from infantino.runtime.contract.preprocess import preprocess, PreprocessSpec
from infantino.runtime.contract.head import Head
from infantino.trainer.synth import synth_arrays
from infantino.trainer.realface_guard import real_face_split
from infantino.benchmarks.machine import describe, load_average

import argparse
ap = argparse.ArgumentParser(description=__doc__ + " Env: HEAD=head.infh (else the demo head for mini_xception or "
                             "a proxy MLP fitted on fp32 embeddings), ONLY=comma list of rows.")
ap.add_argument("folder", help="a folder written by build.py")
ap.add_argument("seconds", type=float, help="seconds per timing round (0: quality only)")
ap.add_argument("rounds", type=int, help="timing rounds per thread count")
ap.add_argument("model", help="model name recorded in results.json (mini_xception selects the demo head)")
a = ap.parse_args()
d = Path(a.folder); secs = a.seconds; rounds = a.rounds; model_name = a.model
spec = PreprocessSpec.model_validate(json.load(open(d / "spec.json")))
calib = np.load(d / "calib.npy")

class R(CalibrationDataReader):
    def __init__(s): s.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])
    def get_next(s): return next(s.it, None)

pre = d / "ort_pre.onnx"
if not pre.exists():
    quant_pre_process(str(d / "extractor.onnx"), str(pre))
ORT_Q = {"ort-qdq-u8s8": (QuantFormat.QDQ, QuantType.QUInt8), "ort-qop-u8s8": (QuantFormat.QOperator, QuantType.QUInt8),
         "ort-qdq-s8s8": (QuantFormat.QDQ, QuantType.QInt8)}
for k, (fmt, act) in ORT_Q.items():
    p = d / f"{k}.onnx"
    if not p.exists():
        quantize_static(str(pre), str(p), R(), quant_format=fmt, per_channel=True, activation_type=act,
                        weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": act == QuantType.QInt8})

class OrtRun:
    def __init__(s, path, threads, profile=None):
        so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile:
            so.enable_profiling = True; so.profile_file_prefix = profile
        s.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    def __call__(s, x):  # x NCHW batch 1
        return s.s.run(None, {"input": x})[0]

class TflRun:
    def __init__(s, path, threads):
        s.i = Interpreter(model_path=str(path), num_threads=threads); s.i.allocate_tensors()
        s.inp = s.i.get_input_details()[0]; s.out = s.i.get_output_details()[0]
    def __call__(s, x):
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if s.inp["dtype"] != np.float32:
            sc, zp = s.inp["quantization"]; x = np.clip(np.rint(x / sc) + zp, -128, 127).astype(s.inp["dtype"])
        s.i.set_tensor(s.inp["index"], x); s.i.invoke()
        y = s.i.get_tensor(s.out["index"])
        if s.out["dtype"] != np.float32:
            sc, zp = s.out["quantization"]; y = (y.astype(np.float32) - zp) * sc
        return y

ARTS = {"ort-fp32": "extractor.onnx", **{k: f"{k}.onnx" for k in ORT_Q},
        "tfl-fp32": "tfl_fp32.tflite", "tfl-int8-aeq": "tfl_int8_aeq.tflite",
        "tfl-int8-aeq-io8": "tfl_int8_aeq_io8.tflite", "tfl-int8-pt2e": "tfl_int8_pt2e.tflite",
        "tfl-int8-qat": "tfl_int8_qat.tflite"}
if os.environ.get("ONLY"):
    ARTS = {k: v for k, v in ARTS.items() if k in os.environ["ONLY"].split(",")}
ARTS = {k: v for k, v in ARTS.items() if (d / v).exists()}
def make(k, threads, profile=None):
    p = d / ARTS[k]
    return OrtRun(p, threads, profile) if k.startswith("ort") else TflRun(p, threads)

# ---- quality
syn = synth_arrays(175, domain="adult", seed=1, size=96, difficulty="medium")[0] + \
      synth_arrays(175, domain="infant", seed=1, size=96, difficulty="medium")[0]
split = real_face_split()
xs = {"synthetic": preprocess(syn, spec, "NCHW"), "real": preprocess(split.heldout.images, spec, "NCHW")}
emb = {}
for k in ARTS:
    r = make(k, 2)
    emb[k] = {s: np.concatenate([r(x[i:i + 1]) for i in range(len(x))]) for s, x in xs.items()}
    del r
if model_name == "mini_xception" or os.environ.get("HEAD"):
    hp = os.environ.get("HEAD") or "/work/main/demo-out/bundle/head.infh"
    head = Head.from_bytes(open(hp, "rb").read()).forward
    head_note = f"trained head {hp}"
else:  # proxy head fitted on fp32 embeddings: 700 synthetic faces (labels) + 100 distil real faces (teacher)
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    tr_img, tr_lab = synth_arrays(700, domain="adult", seed=0, size=96, difficulty="medium")
    tx = preprocess(list(tr_img) + list(split.distil.images), spec, "NCHW")
    ty = np.concatenate([tr_lab, split.teacher_distil.argmax(1)])
    r = make("ort-fp32", 2); te = np.concatenate([r(tx[i:i + 1]) for i in range(len(tx))])
    clf = make_pipeline(StandardScaler(), MLPClassifier(100, max_iter=500, random_state=0)).fit(te, ty)
    head = clf.predict_proba; head_note = f"proxy MLP head fitted on fp32 embeddings (train acc {clf.score(te, ty):.2f})"
quality = {}
ref = {s: head(emb["ort-fp32"][s]).argmax(1) for s in xs}
margins = {}
for s_ in xs:
    p_ = np.sort(head(emb["ort-fp32"][s_]), 1)
    margins[s_] = {"gap_lt_0.05": float((p_[:, -1] - p_[:, -2] < 0.05).mean()),
                   "gap_lt_0.10": float((p_[:, -1] - p_[:, -2] < 0.10).mean()), "n": len(p_)}
print("fp32 head top1-top2 gaps", margins)
for k in ARTS:
    q = {}
    for s in xs:
        a, b = emb[k][s], emb["ort-fp32"][s]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
        q[f"agree_{s}"] = float((head(a).argmax(1) == ref[s]).mean()); q[f"cos_{s}"] = float(cos.mean())
        q[f"cos_min_{s}"] = float(cos.min())
    quality[k] = q
    print(k, {a: round(v, 4) for a, v in q.items()}, flush=True)

# ---- timing: batch 1, interleaved rotating order, per thread count, `rounds` rounds of `secs`
x1 = xs["synthetic"][:1]
timing = {}
for threads in ((1, 2) if secs > 0 else ()):
    runs = {k: make(k, threads) for k in ARTS}
    for r in runs.values():
        for _ in range(20): r(x1)
    keys = list(runs)
    for rd in range(rounds):
        la0 = load_average(); ts = {k: [] for k in keys}; t_end = time.perf_counter() + secs; i = 0
        gc.disable()
        while time.perf_counter() < t_end:
            for k in keys[i % len(keys):] + keys[:i % len(keys)]:
                t0 = time.perf_counter(); runs[k](x1); ts[k].append(time.perf_counter() - t0)
            i += 1
        gc.enable()
        la1 = load_average()
        for k in keys:
            timing.setdefault(f"t{threads}", {}).setdefault(k, []).append(
                {"p50_ms": float(np.median(ts[k]) * 1e3), "n": len(ts[k]), "load": [la0, la1]})
        print(f"t{threads} round {rd} load {la0}->{la1}: " +
              " ".join(f"{k}={np.median(ts[k])*1e3:.3f}" for k in keys), flush=True)
    del runs
json.dump({"model": model_name, "px": spec.input_size[0], "head": head_note, "quality": quality, "fp32_margins": margins, "timing": timing,
           "artifacts": ARTS, "calibration": f"{len(calib)} images: 64 adult + 64 infant synthetic (seeds 2, 3) + 50 real distil faces",
           "machine": describe(threads=2, peak=False)}, open(d / "results.json", "w"), indent=1)

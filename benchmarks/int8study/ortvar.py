"""int8 study (issue 15): ORT QDQ u8s8 variants (float tail, calibration method) - quality only vs ORT fp32."""
import json, numpy as np, onnx, onnxruntime as ort
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader, CalibrationMethod
from infantino.runtime.contract.preprocess import preprocess, PreprocessSpec
from infantino.runtime.contract.head import Head
from infantino.trainer.synth import synth_arrays
from infantino.trainer.realface_guard import real_face_split
import argparse
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("folder", help="a folder written by build.py + measure.py")
ap.add_argument("head", help="head.infh of the extractor")
a = ap.parse_args()
d, headp = a.folder, a.head
spec = PreprocessSpec.model_validate(json.load(open(f"{d}/spec.json"))); calib = np.load(f"{d}/calib.npy")
class R(CalibrationDataReader):
    def __init__(s): s.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])
    def get_next(s): return next(s.it, None)
g = onnx.load(f"{d}/ort_pre.onnx").graph
gemm = [n.name for n in g.node if n.op_type in ("Gemm", "MatMul")]
convs = [n.name for n in g.node if n.op_type == "Conv"]
V = {"minmax": ({}, CalibrationMethod.MinMax), "minmax-float-gemm": ({"nodes_to_exclude": gemm}, CalibrationMethod.MinMax),
     "minmax-float-first-last": ({"nodes_to_exclude": gemm + convs[:1] + convs[-1:]}, CalibrationMethod.MinMax),
     "percentile": ({}, CalibrationMethod.Percentile), "entropy": ({}, CalibrationMethod.Entropy)}
head = Head.from_bytes(open(headp, "rb").read()).forward
syn = synth_arrays(175, domain="adult", seed=1, size=96, difficulty="medium")[0] + \
      synth_arrays(175, domain="infant", seed=1, size=96, difficulty="medium")[0]
xs = {"synthetic": preprocess(syn, spec, "NCHW"), "real": preprocess(real_face_split().heldout.images, spec, "NCHW")}
def emb(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
    return {k: s.run(None, {"input": x})[0] for k, x in xs.items()}
ref = emb(f"{d}/extractor.onnx")
for name, (kw, meth) in V.items():
    p = f"{d}/ortv-{name}.onnx"
    quantize_static(f"{d}/ort_pre.onnx", p, R(), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=meth,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kw)
    e = emb(p)
    print(name, {k: round(float((head(e[k]).argmax(1) == head(ref[k]).argmax(1)).mean()), 4) for k in xs}, flush=True)

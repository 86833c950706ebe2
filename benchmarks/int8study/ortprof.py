"""int8 study (issue 15): onnxruntime per-operator profile (enable_profiling) of fp32 vs int8 ONNX, summarised by op type."""
import json, os, collections
import numpy as np, onnxruntime as ort
import argparse
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("folder", help="a folder written by build.py + measure.py")
ap.add_argument("threads", type=int)
ap.add_argument("iters", type=int, help="profiled runs after 30 warm-up runs")
ap.add_argument("models", help="comma list of ONNX stems in the folder, e.g. extractor,ort-qdq-u8s8")
a = ap.parse_args()
d, threads, iters, names = a.folder, a.threads, a.iters, a.models.split(",")
x = np.load(f"{d}/calib.npy")[:1]
res = {}
for n in names:
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_profiling = True; so.profile_file_prefix = f"{d}/prof-{n}-t{threads}"
    s = ort.InferenceSession(f"{d}/{n}.onnx", so, providers=["CPUExecutionProvider"])
    for _ in range(30): s.run(None, {"input": x})
    for _ in range(iters): s.run(None, {"input": x})
    f = s.end_profiling(); ev = json.load(open(f)); os.remove(f)
    per = collections.defaultdict(float); cnt = collections.Counter(); runs = []
    starts = sorted(e["ts"] for e in ev if e.get("cat") == "Session" and e["name"] == "model_run")
    t_from = starts[30]  # skip the warm-up runs
    for e in ev:
        if e["ts"] < t_from:
            continue
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["args"]["op_name"]] += e["dur"]; cnt[e["args"]["op_name"]] += 1
        if e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    total_runs = len(runs)
    tab = {op: {"us_per_run": per[op] / total_runs, "nodes": cnt[op] // total_runs} for op in per}
    res[n] = {"model_run_us_median": float(np.median(runs)), "ops": dict(sorted(tab.items(), key=lambda kv: -kv[1]["us_per_run"]))}
    print(f"== {n} t{threads}: model_run median {np.median(runs):.0f} us, sum of kernels {sum(v['us_per_run'] for v in tab.values()):.0f} us")
    for op, v in list(res[n]["ops"].items())[:12]:
        print(f"   {op:28s} {v['us_per_run']:8.1f} us  x{v['nodes']}")
json.dump(res, open(f"{d}/ortprof-t{threads}.json", "w"), indent=1)

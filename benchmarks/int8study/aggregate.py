"""int8 study (issue 15): merge the results.json of measured folders into one JSON and one CSV (3-round medians)."""
import argparse, csv, json
from pathlib import Path
import numpy as np

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("folders", nargs="+", help="folders holding results.json (measure.py)")
ap.add_argument("--json", required=True)
ap.add_argument("--csv", required=True)
a = ap.parse_args()
runs, rows = [], []
for f in a.folders:
    r = json.load(open(Path(f) / "results.json"))
    r["folder"] = Path(f).name
    prof = Path(f) / "ortprof-t1.json"
    if prof.exists():  # onnxruntime per-operator profile (ortprof.py, 1 thread)
        r["ort_profile_t1"] = json.load(open(prof))
    runs.append(r)
    for th, per in r["timing"].items():
        base = float(np.median([x["p50_ms"] for x in per["ort-fp32"]]))
        tbase = float(np.median([x["p50_ms"] for x in per["tfl-fp32"]]))
        for k, rounds in per.items():
            p50 = [x["p50_ms"] for x in rounds]
            ref = tbase if k.startswith("tfl") else base
            q = r["quality"][k]
            rows.append({"model": r["model"], "px": r["px"], "threads": int(th[1:]), "recipe": k,
                         "p50_ms_median": round(float(np.median(p50)), 4), "p50_ms_min": round(min(p50), 4),
                         "p50_ms_max": round(max(p50), 4), "rounds": len(p50), "n_per_round": rounds[0]["n"],
                         "fp32_same_runtime_ms": round(ref, 4),
                         "speedup_vs_same_runtime_fp32": round(ref / float(np.median(p50)), 3),
                         "speedup_vs_tflite_fp32": round(tbase / float(np.median(p50)), 3),
                         "agree_real": q["agree_real"], "agree_synthetic": q["agree_synthetic"],
                         "cos_real": round(q["cos_real"], 5), "cos_synthetic": round(q["cos_synthetic"], 5),
                         "cos_min_synthetic": round(q["cos_min_synthetic"], 5),
                         "load_1m_start": rounds[0]["load"][0][0], "load_1m_end": rounds[-1]["load"][1][0],
                         "head": r["head"], "calibration": r["calibration"],
                         "machine_cpu_model": r["machine"].get("cpu_model"),
                         "machine_logical_cores": r["machine"].get("logical_cores"),
                         "machine_onnxruntime": r["machine"].get("libraries", {}).get("onnxruntime"),
                         "machine_ai-edge-litert": r["machine"].get("libraries", {}).get("ai-edge-litert")})
json.dump({"runs": runs, "rows": rows}, open(a.json, "w"), indent=1)
with open(a.csv, "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader(); w.writerows(rows)

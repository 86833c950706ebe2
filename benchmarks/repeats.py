"""Median and range over repeated benchmark runs: the figures docs/benchmarks.md and the README quote.

    python -m infantino.benchmarks.repeats RUN1.json RUN2.json RUN3.json --json S.json --csv S.csv --markdown S.md

`frames` runs: rows are matched by (set, row); each figure is given as the median of the runs with its min and
max. A goal is met when the median ratio of the fastest qualifying row (recall and agreement >= the peer's)
reaches it and a row qualified in every run. Runs of any other kind (detect, web, models, site-bridge...): the
median, min and max of every number the runs share (top-level fields, sections, rows by their "key"), printed
one per line and written with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_text

from . import report as rpt

log = logging.getLogger(__name__)

METRICS = ("fps", "e2e_p50_ms", "e2e_p95_ms", "detect_ms", "classify_ms", "other_ms", "recall", "recall_upright",
           "agreement", "agreement_of_found", "false_face_rate", "vs_fer_haar", "vs_fer_mtcnn")
MD_COLUMNS = (("fps", "frames/s", ".1f"), ("e2e_p50_ms", "p50 ms", ".1f"), ("e2e_p95_ms", "p95 ms", ".1f"),
              ("detect_ms", "detect ms", ".1f"), ("classify_ms", "classify ms", ".2f"), ("recall", "recall", ".3f"),
              ("agreement", "agreement", ".3f"), ("agreement_of_found", "agr. of found", ".3f"),
              ("false_face_rate", "false faces", ".2f"), ("vs_fer_haar", "× fer Haar", ".1f"),
              ("vs_fer_mtcnn", "× fer MTCNN", ".1f"))


def median_range(values: list) -> Optional[dict]:
    """{median, min, max, n} of the values that are not None; None when there are none."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "n": len(v)}


def combine(reports: Sequence[dict]) -> dict:
    """One summary of several frames reports (same rows): per row and metric the median, min and max."""
    if not reports:
        raise ValueError("no reports to combine")
    bad = [r.get("kind") for r in reports if r.get("kind") != "frames"]
    if bad:
        raise ValueError(f"expected `infantino-bench frames` reports, got kind {bad[0]!r}")
    keys = [(r["set"], r["key"]) for r in reports[0]["rows"]]
    rows = []
    for s, k in keys:
        runs = [next((r for r in rep["rows"] if (r["set"], r["key"]) == (s, k)), None) for rep in reports]
        first = runs[0]
        d = {"set": s, "key": k, "kind": first.get("kind"), "runs_ok": sum(1 for r in runs if r and r["status"] == "ok"),
             "runs": len(runs), "reasons": sorted({r["reason"] for r in runs if r and r.get("reason")})}
        for m in METRICS:
            d[m] = median_range([r.get(m) if r and r["status"] == "ok" else None for r in runs])
        rows.append(d)
    goals = []
    for i, g in enumerate(reports[0].get("goals", [])):
        per_run = [rep["goals"][i] for rep in reports]
        ratios = [x.get("ratio") for x in per_run]
        st = median_range(ratios)
        qualified = all(r is not None for r in ratios)
        met = bool(st and qualified and st["median"] >= g["target"])
        goals.append({"set": g["set"], "peer": g["peer"], "target": g["target"], "ratio": st,
                      "fastest_ratio": median_range([x.get("fastest_ratio") for x in per_run]),
                      "best": sorted({x.get("best") for x in per_run if x.get("best")}),
                      "met_runs": sum(bool(x.get("met")) for x in per_run), "runs": len(per_run),
                      "qualified_every_run": qualified, "met": met,
                      "status": "met" if met else ("missed" if st else "missed (no row qualified)")})
    runs = [{"timestamp": rep["machine"].get("timestamp"), "load_average_start": rep["machine"].get("load_average_start"),
             "load_average_end": rep["machine"].get("load_average_end"), "loads": rep.get("loads")} for rep in reports]
    return {"schema": rpt.SCHEMA, "kind": "frames-summary", "machine": reports[0]["machine"],
            "config": reports[0]["config"], "runs": runs, "rows": rows, "goals": goals,
            "peers": reports[0].get("peers")}


def _numeric_leaves(obj, prefix: str = "") -> dict:
    """{"a.b.c": number} for every int/float (not bool) under a dict; lists and the machine record are skipped."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("machine", "config", "samples_ms", "schema"):
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(_numeric_leaves(v, key))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = v
    return out


def _rows_by_key(report: dict) -> dict:
    """Rows that carry a "key" (detect, models, web phases...) as {"rows[key].figure": number}."""
    out = {}
    for section, rows in (("rows", report.get("rows")), ("camera", (report.get("camera") or {}).get("rows"))):
        for r in rows or []:
            if isinstance(r, dict) and "key" in r:
                for k, v in _numeric_leaves(r).items():
                    out[f"{section}[{r['key']}].{k}"] = v
    return out


def combine_figures(reports: Sequence[dict]) -> dict:
    """Any other kind of run (detect, web, models, site-bridge...): the median, min and max of every number found
    in all of them — top-level fields and sections, and the figures of rows that have a "key"."""
    if not reports:
        raise ValueError("no reports to combine")
    kinds = {r.get("kind") for r in reports}
    if len(kinds) != 1:
        raise ValueError(f"runs of different kinds: {sorted(map(str, kinds))}")
    per_run = [{**_numeric_leaves(r), **_rows_by_key(r)} for r in reports]
    common = [k for k in per_run[0] if all(k in f for f in per_run[1:])]
    return {"schema": rpt.SCHEMA, "kind": f"{reports[0].get('kind')}-summary", "machine": reports[0].get("machine"),
            "config": reports[0].get("config"),
            "runs": [{"timestamp": (r.get("machine") or {}).get("timestamp"),
                      "load_average_start": (r.get("machine") or {}).get("load_average_start")} for r in reports],
            "figures": {k: median_range([f[k] for f in per_run]) for k in common}}


def _cell(st: Optional[dict], spec: str) -> str:
    if st is None:
        return "–"
    med = format(st["median"], spec)
    if st["n"] > 1 and format(st["min"], spec) != format(st["max"], spec):
        return f"{med} ({format(st['min'], spec)}–{format(st['max'], spec)})"
    return med


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (median, range in brackets) and one line per goal."""
    head = "| set | row | " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (2 + len(MD_COLUMNS))]
    for r in summary["rows"]:
        if r["runs_ok"] == 0:
            lines.append(f"| {r['set']} | {r['key']} | failed: {'; '.join(r['reasons'])} |" + " |" * (len(MD_COLUMNS) - 1))
            continue
        cells = [_cell(r[m], spec) for m, _, spec in MD_COLUMNS]
        lines.append(f"| {r['set']} | {r['key']} | " + " | ".join(cells) + " |")
    lines.append("")
    for g in summary["goals"]:
        if g["ratio"]:
            what = f"{_cell(g['ratio'], '.1f')}× ({', '.join(g['best'])})"
        else:
            what = "no row of ours had equal or better recall and agreement"
        fastest = _cell(g["fastest_ratio"], ".1f") + "×" if g["fastest_ratio"] else "–"
        lines.append(f"- {g['set']}: ≥ {g['target']:.0f}× {g['peer']} at equal or better recall and agreement — "
                     f"**{g['status']}**: {what}; met in {g['met_runs']} of {g['runs']} runs; fastest row of ours "
                     f"regardless of quality {fastest}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infantino.benchmarks.repeats", description=__doc__.strip().splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="JSON files of one benchmark's --json runs (frames, detect, "
                   "web, models...)")
    p.add_argument("--json", type=Path, default=None, help="write the summary as JSON")
    p.add_argument("--csv", type=Path, default=None, help="write one line per row: median, min, max per figure")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table (default: print it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        reports = [json.loads(f.read_text()) for f in args.runs]
        if any(r.get("kind") != "frames" for r in reports):
            if any(str(r.get("kind", "")).endswith("summary") for r in reports):
                raise ValueError("a summary is not a run")
            summary = combine_figures(reports)
            summary["sources"] = [str(f) for f in args.runs]
            if args.json:
                rpt.write_json(args.json, summary)
            for k, st in summary["figures"].items():
                print(f"{k}\t{_cell(st, '.4g')}")
            return 0
        summary = combine(reports)
    except (OSError, ValueError, KeyError) as e:
        print(f"repeats: {e}", file=sys.stderr)
        return 2
    summary["sources"] = [str(f) for f in args.runs]
    if args.json:
        rpt.write_json(args.json, summary)
    if args.csv:
        flat = [{"set": r["set"], "key": r["key"], "runs_ok": r["runs_ok"],
                 **{f"{m}_{s}": (r[m] or {}).get(s) for m in METRICS for s in ("median", "min", "max")}}
                for r in summary["rows"]]
        rpt.write_csv(args.csv, flat, summary["machine"])
    md = markdown(summary)
    if args.markdown:
        atomic_write_text(args.markdown, md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

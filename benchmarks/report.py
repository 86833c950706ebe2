"""Benchmark output: a rich table on the terminal, JSON and CSV files with the machine description, PNG charts.

Every file is written atomically (temp file + rename), so an interrupted run never leaves half a JSON. The
JSON holds everything (machine, configuration, rows, raw latency samples); the CSV is one line per row with
the machine columns repeated on each line, so files from several hosts can simply be concatenated.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_bytes, atomic_write_text
from infantino.runtime.contract.errors import BackendUnavailable

log = logging.getLogger(__name__)

SCHEMA = "infantino-bench/1"
MACHINE_CSV_FIELDS = ("hostname", "cpu_model", "logical_cores", "physical_cores", "threads", "timestamp")
MACHINE_CSV_LIBS = ("numpy", "onnxruntime", "ai-edge-litert", "torch", "tensorrt")


def make_report(kind: str, machine: dict, config: dict, rows: list[dict], **sections: Any) -> dict:
    """The JSON document of one run: schema, kind (models/pipeline/online), machine, config, rows, sections."""
    return {"schema": SCHEMA, "kind": kind, "machine": machine, "config": config, "rows": rows, **sections}


def make_plain_report(kind: str, machine: dict, config: dict, result: dict) -> dict:
    """The JSON document of a benchmark whose result is a plain dict (attacks, fleet, web): its fields at the top
    level beside schema, kind, machine and config, so every --json result records the machine it ran on."""
    return {"schema": SCHEMA, "kind": kind, "machine": machine, "config": config, **result}


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, Paths to str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=False) + "\n"


def write_json(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_json(report))
    log.info("wrote %s", path)
    return path


def machine_columns(machine: dict) -> dict:
    """The machine description flattened into CSV columns (prefix machine_)."""
    out = {f"machine_{k}": machine.get(k) for k in MACHINE_CSV_FIELDS}
    libs = machine.get("libraries") or {}
    for lib in MACHINE_CSV_LIBS:
        out[f"machine_{lib}"] = libs.get(lib)
    peak = machine.get("peak") or {}
    out["machine_peak_gflops"] = peak.get("peak_gflops")
    load = machine.get("load_average_start")
    out["machine_load_avg_1m"] = load[0] if load else None
    return out


def to_csv(rows: Sequence[dict], machine: dict, columns: Optional[Sequence[str]] = None) -> str:
    """CSV text: the given columns (default: union of row keys in first-seen order) + machine columns."""
    if columns is None:
        columns = []
        for r in rows:
            for k, v in r.items():
                if k not in columns and not isinstance(v, (dict, list)):
                    columns.append(k)
    mcols = machine_columns(machine)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns) + list(mcols))
    for r in rows:
        vals = [_csv_value(r.get(c)) for c in columns] + [_csv_value(v) for v in mcols.values()]
        w.writerow(vals)
    return buf.getvalue()


def _csv_value(v):
    v = _clean(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return v


def write_csv(path: str | Path, rows: Sequence[dict], machine: dict, columns: Optional[Sequence[str]] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_csv(rows, machine, columns))
    log.info("wrote %s", path)
    return path


# ---- terminal table --------------------------------------------------------------------------------------
def fmt(v, spec: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if spec == "pct":
        return f"{100 * v:.1f}%"
    if spec == "x":
        return f"{v:.2f}×"
    if spec:
        return format(v, spec)
    return str(v)


def make_console(stderr: bool = False):
    """A rich Console; when output is not a terminal (pipes, CI logs) it is 160 columns, not rich's 80."""
    from rich.console import Console  # optional: rich comes with the train extra only

    c = Console(stderr=stderr)
    if not c.is_terminal:
        c = Console(stderr=stderr, width=180)
    return c


def print_table(title: str, columns: Sequence[tuple[str, str, str]], rows: Iterable[dict],
                console=None, caption: Optional[str] = None) -> None:
    """A rich table of rows; columns are (key, header, format spec).

    Failed rows are red, marked FAILED [n]; the reasons follow the table as footnotes (one per distinct reason).
    """
    # optional: rich comes with the train extra only:
    from rich.markup import escape
    from rich.table import Table

    console = console or make_console()
    t = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for key, header, _ in columns:
        left = key in ("key", "backend", "precision", "status", "stage", "bundle", "name", "reason", "quality",
                       "section")
        t.add_column(header, justify="left" if left else "right", overflow="fold",
                     no_wrap=key in ("key", "quality"))
    reasons: list[str] = []
    for r in rows:
        failed = r.get("status") not in (None, "ok")
        cells = []
        for key, _, spec in columns:
            v = r.get(key)
            if key == "status" and failed:
                reason = str(r.get("reason") or "no reason given")
                if reason not in reasons:
                    reasons.append(reason)
                v = f"{str(r.get('status')).upper()} [{reasons.index(reason) + 1}]"
            cells.append(escape(fmt(v, spec)))
        t.add_row(*cells, style=("yellow" if r.get("status") == "skipped" else "red") if failed else None)
    console.print(t)
    for i, reason in enumerate(reasons, 1):
        console.print(f"  [{i}] {escape(reason)}", style="red", highlight=False)


# ---- plots -------------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)
    except ImportError as e:
        raise BackendUnavailable("--plot needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, ~0.4 s to import (train extra)

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_latency_distribution(samples_ms: dict[str, list[float]], path: Path, title: str,
                              xlabel: str = "latency per image (ms)") -> Path:
    """Box plot of per-call latencies, one box per row (log scale when the spread is wide)."""
    plt = _pyplot()
    keys = [k for k, v in samples_ms.items() if v]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(keys), 2) + 1.5))
    if keys:
        ax.boxplot([samples_ms[k] for k in keys], vert=False, whis=(1, 99), showfliers=True,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_yticks(range(1, len(keys) + 1), keys, fontsize=8)
        lo = min(min(samples_ms[k]) for k in keys)
        hi = max(max(samples_ms[k]) for k in keys)
        if lo > 0 and hi / lo > 20:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no successful rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel + " — whiskers p1/p99")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_quality_vs_latency(rows: Sequence[dict], path: Path, quality_keys: Sequence[str], title: str) -> Path:
    """Quality (accuracy and/or top-1 agreement, one panel each) against p50 latency per image, one point per
    backend x precision at the smallest batch (the latency a camera sees), with a legend instead of labels."""
    plt = _pyplot()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("p50_ms_per_image") is not None]
    smallest: dict = {}
    for r in ok:
        k = r["key"].rsplit("/b", 1)[0]
        if k not in smallest or r["batch"] < smallest[k]["batch"]:
            smallest[k] = r
    keys = [q for q in quality_keys if any(r.get(q) is not None for r in smallest.values())] or list(quality_keys[:1])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.8), squeeze=False)
    markers = "osD^vP*Xh<>"
    for ax, q in zip(axes[0], keys):
        pts = [(k, r) for k, r in smallest.items() if r.get(q) is not None]
        for i, (k, r) in enumerate(pts):
            ax.scatter(r["p50_ms_per_image"], 100 * r[q], s=40, marker=markers[i % len(markers)],
                       label=f"{k} (b{r['batch']})")
        if not pts:
            ax.text(0.5, 0.5, f"no rows with {q}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per image (ms, log)")
        ax.set_ylabel(q.replace("_", " ") + " (%)")
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_stacked_stages(per_row: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Horizontal stacked bars: ms per frame of each stage, one bar per pipeline row."""
    plt = _pyplot()
    keys = list(per_row)
    stages: list[str] = []
    for v in per_row.values():
        stages += [s for s in v if s not in stages]
    fig, ax = plt.subplots(figsize=(9, 0.6 * max(len(keys), 2) + 1.5))
    left = [0.0] * len(keys)
    for s in stages:
        vals = [per_row[k].get(s, 0.0) or 0.0 for k in keys]
        ax.barh(keys, vals, left=left, label=s)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("ms per frame (mean)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(len(stages), 6) or 1, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_lines(series: dict[str, tuple[list[float], list[float]]], path: Path, title: str, xlabel: str,
               ylabel: str) -> Path:
    """Line chart of named (x, y) series, e.g. a forgetting curve per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_histograms(samples: dict[str, list[float]], path: Path, title: str, xlabel: str) -> Path:
    """Overlaid histograms of latency samples."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, v in samples.items():
        if v:
            ax.hist(v, bins=40, alpha=0.55, label=f"{name} (n={len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(samples.values()):
        ax.legend(fontsize=8)
    path = _save(fig, path)
    plt.close(fig)
    return path

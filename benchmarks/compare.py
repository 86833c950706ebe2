"""Two benchmark runs side by side: their metrics matched by row key, the ratio B/A of each, the two machines.

A run is a JSON file written by an `infantino-bench` command (schema infantino-bench/1). Its metrics are the numeric
fields of its rows, matched by the row's "key" (the one "value" of an online row is named by the key alone), and
the numeric fields outside rows, machine, config and summaries (e.g. fleet's update_latency_ms.p50), named by path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .report import SCHEMA

NOT_METRICS = ("n", "batch", "img_size", "threads", "quality_n", "round")  # row identity and sample counts, not measures
SKIP_TOP = ("schema", "kind", "machine", "config", "rows", "sections", "summary", "errors", "mlflow_run_id")
MACHINE_LIBS = ("numpy", "scikit-learn", "onnxruntime", "ai-edge-litert", "torch")


@dataclass
class Metric:
    """One measure of both runs: its name, unit (if the row gives one), A, B and B/A (None when undefined)."""

    name: str
    unit: str
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a


@dataclass
class Comparison:
    """The matched metrics, the machines and the rows that only one run has (or that failed in one)."""

    kind: str
    machines: tuple[dict, dict]
    metrics: list[Metric]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    not_ok: list[str] = field(default_factory=list)


def load_run(path: str | Path) -> dict:
    """A benchmark JSON file; FileNotFoundError / ValueError saying what is wrong with anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such benchmark result: {path}")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an infantino-bench result (no \"schema\": \"{SCHEMA}\"; results written "
                         f"before the machine record was added to every command lack it)")
    if not isinstance(doc.get("kind"), str) or not isinstance(doc.get("machine"), dict):
        raise ValueError(f"{path}: an infantino-bench result needs a \"kind\" and a \"machine\" record")
    return doc


def metrics(doc: dict) -> tuple[dict[str, tuple[str, float]], list[str]]:
    """{metric name: (unit, value)} of one run, and the keys of its rows that are not ok."""
    out: dict[str, tuple[str, float]] = {}
    not_ok: list[str] = []
    rows = doc.get("rows")
    if isinstance(rows, list):
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                continue
            key = str(row.get("key", f"row {i}"))
            if row.get("status", "ok") != "ok":
                not_ok.append(key)
                continue
            for name, v in row.items():
                if _number(v) and name not in NOT_METRICS:
                    out[key if name == "value" else f"{key} {name}"] = (str(row.get("unit") or ""), float(v))
    for name, v in _leaves({k: v for k, v in doc.items() if k not in SKIP_TOP}):
        out[name] = ("", v)
    return out, not_ok


def compare(a: dict, b: dict) -> Comparison:
    """Match the metrics of runs a and b (same kind) by name; ValueError if they are different benchmarks."""
    if a["kind"] != b["kind"]:
        raise ValueError(f"A is a {a['kind']!r} run and B a {b['kind']!r} run: compare two runs of one benchmark")
    ma, bad_a = metrics(a)
    mb, bad_b = metrics(b)
    if not ma and not mb:
        raise ValueError("neither run has a numeric metric to compare")
    names = list(ma) + [n for n in mb if n not in ma]
    rows = [Metric(n, (ma.get(n) or mb.get(n))[0], _value(ma, n), _value(mb, n)) for n in names]
    keys_a, keys_b = _row_keys(a), _row_keys(b)
    return Comparison(kind=a["kind"], machines=(a["machine"], b["machine"]), metrics=rows,
                      only_a=[k for k in keys_a if k not in keys_b], only_b=[k for k in keys_b if k not in keys_a],
                      not_ok=list(dict.fromkeys(bad_a + bad_b)))


def machine_summary(m: dict) -> str:
    """One line: host, CPU, cores, Python, key library versions, load average at start (and end)."""
    libs = m.get("libraries") or {}
    lib_text = ", ".join(f"{k} {libs[k]}" for k in MACHINE_LIBS if libs.get(k))
    load = m.get("load_average_start")
    end = m.get("load_average_end")
    cores = f"{m.get('logical_cores')} logical / {m.get('physical_cores')} physical cores"
    return (f"{m.get('hostname', '?')} ({m.get('timestamp', '?')}): {m.get('cpu_model', '?')}, {cores}, "
            f"Python {m.get('python', '?')}, {lib_text or 'no library versions'}; load {load}"
            + (f" -> {end}" if end is not None else ""))


def _row_keys(doc: dict) -> list[str]:
    rows = doc.get("rows")
    if not isinstance(rows, list):
        return []
    return [str(r.get("key", f"row {i}")) for i, r in enumerate(rows) if isinstance(r, dict)]


def _value(m: dict[str, tuple[str, float]], name: str) -> float | None:
    return m[name][1] if name in m else None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _leaves(obj, prefix: str = ""):
    """(dotted path, number) of every finite numeric leaf of nested dicts (lists are not metrics)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif _number(obj):
        yield prefix, float(obj)

"""`infantino-bench compare A.json B.json`: two real benchmark runs matched by row key with their ratio B/A and
both machines; every --json result records its machine; bad input is a clear error (exit 2)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from infantino.benchmarks.cli import main
from infantino.benchmarks.compare import compare, load_run, metrics


def _bench(*argv) -> int:
    try:
        return main(["-q", *map(str, argv)])
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two small runs of the online benchmark's learn_one section (real measurements, a few calls each)."""
    d = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        assert _bench("online", "--sections", "learn_one", "--n", 5, "--warmup", 1, "--no-peak",
                      "--json", d / f"{name}.json") == 0
    return d / "a.json", d / "b.json"


def test_compare_prints_machines_and_the_ratio_of_every_metric(two_runs, capsys):
    a, b = two_runs
    capsys.readouterr()
    assert _bench("compare", a, b) == 0
    out = capsys.readouterr().out
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert f"A = {a}" in out and f"B = {b}" in out and ra["machine"]["cpu_model"] in out
    c = compare(ra, rb)
    values_a = {r["key"]: r["value"] for r in ra["rows"]}
    values_b = {r["key"]: r["value"] for r in rb["rows"]}
    assert [m.name for m in c.metrics] == list(values_a)  # every row of the section, in order, matched by key
    for m in c.metrics:
        assert (m.a, m.b) == (values_a[m.name], values_b[m.name])
        assert m.ratio == pytest.approx(values_b[m.name] / values_a[m.name])
        line = next(line for line in out.splitlines() if f" {m.name} " in line)
        assert f"{m.ratio:.3f}" in line
    assert {"learn_one.p50", "learn_one.partial_fit_p50", "learn_one.ratio_p50"} <= set(values_a)
    s = ra["sections"]["learn_one"]
    assert s["partial_fit_rows"] == 1 and s["ratio_p50"] == pytest.approx(s["p50_ms"] / s["partial_fit_p50_ms"])


def test_filter_and_rows_of_one_run_only(two_runs, tmp_path, capsys):
    a, b = two_runs
    rb = json.loads(b.read_text())
    rb["rows"] = [r for r in rb["rows"] if r["key"] != "learn_one.p95"]
    rb["rows"].append({**rb["rows"][0], "key": "learn_one.extra"})
    b2 = tmp_path / "b2.json"
    b2.write_text(json.dumps(rb))
    capsys.readouterr()
    assert _bench("compare", a, b2, "--filter", "partial_fit") == 0
    out = capsys.readouterr().out
    assert "learn_one.partial_fit_p50" in out and "learn_one.p99 " not in out
    assert "rows only in A: learn_one.p95" in out and "rows only in B: learn_one.extra" in out


def test_every_json_result_records_the_machine(two_runs):
    m = json.loads(two_runs[0].read_text())["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["python"].count(".") == 2
    assert m["libraries"]["numpy"] and m["libraries"]["scikit-learn"]
    assert len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3


@pytest.mark.parametrize("kind", ["fleet", "web", "attacks"])
def test_plain_results_record_the_machine_too(kind, tmp_path, monkeypatch, capsys):
    """fleet, web and attacks (their measurement replaced by a stand-in here: they need daemons, a broker or a
    browser) write schema, kind, machine and config beside their own fields, and compare reads them."""
    results = iter([1.0, 2.0])

    def fake(*args, **kw):
        v = next(results)
        rows = {"attacks": [{"attack": "zlib bomb", "bytes_sent": 100, "reason": "size", "seconds_to_reject": 0.01 * v,
                             "rss_growth_mb": 0.0, "daemon_alive": True}],
                "web": [{"round": 1, "phase": "open", "fps": 30 / v}], "fleet": None}[kind]
        return {"converged": True, "latency_ms": {"p50": 10 * v}, "valid_update_applied_after": True,
                **({"rows": rows} if rows else {})}

    module = {"fleet": "fleet", "web": "webload", "attacks": "attacks"}[kind]
    stub = types.ModuleType(f"infantino.benchmarks.{module}")
    setattr(stub, {"fleet": "measure_fleet", "web": "measure_web", "attacks": "measure_attacks"}[kind], fake)
    monkeypatch.setitem(sys.modules, f"infantino.benchmarks.{module}", stub)
    extra = {"fleet": ["--devices", 1, "--seconds", 1], "attacks": [],
             "web": ["--bundle", tmp_path / "bundle", "--public-key", tmp_path / "k.pub"]}[kind]
    for name in ("a", "b"):
        assert _bench(kind, *extra, "--json", tmp_path / f"{name}.json") == 0
    doc = load_run(tmp_path / "a.json")
    assert doc["kind"] == kind and doc["machine"]["cpu_model"] and doc["machine"]["load_average_start"]
    assert "json" not in doc["config"]
    names = metrics(doc)[0]
    key = "zlib bomb seconds_to_reject" if kind == "attacks" else "latency_ms.p50"
    assert key in names and "latency_ms.p50" in names
    if kind == "web":
        assert names["round 1 open fps"] == ("", 30.0)
    capsys.readouterr()
    assert _bench("compare", tmp_path / "a.json", tmp_path / "b.json") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if key in line)
    assert "2.000" in line


def test_bad_input_is_a_clear_error(two_runs, tmp_path, capsys):
    a, _ = two_runs
    assert _bench("compare", a, tmp_path / "missing.json") == 2
    assert "no such benchmark result" in capsys.readouterr().err
    (tmp_path / "text.json").write_text("not json {")
    assert _bench("compare", tmp_path / "text.json", a) == 2
    assert "is not a JSON file" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"rows": [{"key": "x", "value": 1}]}))
    assert _bench("compare", a, tmp_path / "other.json") == 2
    assert "is not an infantino-bench result" in capsys.readouterr().err
    models = json.loads(a.read_text())
    models["kind"] = "models"
    (tmp_path / "models.json").write_text(json.dumps(models))
    assert _bench("compare", a, tmp_path / "models.json") == 2
    assert "A is a 'online' run and B a 'models' run" in capsys.readouterr().err
    no_machine = json.loads(a.read_text())
    del no_machine["machine"]
    (tmp_path / "nomachine.json").write_text(json.dumps(no_machine))
    assert _bench("compare", tmp_path / "nomachine.json", a) == 2
    assert "machine" in capsys.readouterr().err
    assert _bench("compare", a) == 2  # B missing: argparse's usage error

"""Unit tests of the benchmark building blocks: interleaved timing, FLOP counting, RSS, machine, reports."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from infantino.benchmarks import common, flops, machine, report, rss, timing


# ---- timing ---------------------------------------------------------------------------------------------------
def test_rotation_puts_every_row_in_every_position():
    n = 4
    orders = [timing.rotation(n, i) for i in range(n)]
    for order in orders:
        assert sorted(order) == list(range(n))
    for pos in range(n):
        assert sorted(o[pos] for o in orders) == list(range(n))
    assert timing.rotation(0, 3) == []


def test_interleaved_runs_rows_round_robin_and_counts_equal():
    calls = []
    rows = [timing.TimedRow(k, (lambda k=k: calls.append(k)), n_images=2) for k in "abc"]
    done = timing.run_interleaved(rows, warmup=2, iters=5, collect=False)
    assert done == 5
    assert [len(r.times) for r in rows] == [5, 5, 5]
    assert len(calls) == 3 * (2 + 5)
    # timed phase: iteration i starts at row i % 3
    timed = calls[6:]
    assert [timed[3 * i] for i in range(5)] == ["a", "b", "c", "a", "b"]


def test_failing_row_keeps_reason_and_others_go_on():
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] > 3:
            raise RuntimeError("device lost")

    rows = [timing.TimedRow("ok", lambda: None), timing.TimedRow("flaky", flaky)]
    timing.run_interleaved(rows, warmup=1, iters=6, collect=False)
    assert rows[0].ok and len(rows[0].times) == 6
    assert not rows[1].ok and "device lost" in rows[1].error and "RuntimeError" in rows[1].error
    assert len(rows[1].times) == 2  # 1 warm-up call + 2 timed calls before the failure


def test_seconds_budget_stops_with_min_iters():
    t = {"now": 0.0}

    def clock():
        return t["now"]

    def slow():
        t["now"] += 1.0

    rows = [timing.TimedRow("a", slow), timing.TimedRow("b", slow)]
    done = timing.run_interleaved(rows, warmup=0, seconds=4.5, min_iters=1, clock=clock, collect=False)
    assert done == 3  # 2 s per iteration: after 3 iterations 6 s >= 4.5 s
    rows = [timing.TimedRow("a", slow)]
    assert timing.run_interleaved(rows, warmup=0, seconds=0.5, min_iters=3, clock=clock, collect=False) == 3


@pytest.mark.parametrize("kw", [{}, {"iters": 0}, {"seconds": -1.0}, {"iters": 2, "warmup": -1}])
def test_interleaved_rejects_bad_budgets(kw):
    with pytest.raises(ValueError):
        timing.run_interleaved([timing.TimedRow("a", lambda: None)], **kw)


def test_summarize_percentiles_and_throughput():
    times = [i / 1000.0 for i in range(1, 101)]  # 1..100 ms
    s = timing.summarize(times, n_images=4)
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["p50_ms_per_image"] == pytest.approx(50.5 / 4)
    assert s["images_per_s"] == pytest.approx(4 / 0.0505)
    assert timing.summarize([], 1) == {"n": 0}


# ---- FLOPs ------------------------------------------------------------------------------------------------------
def _tiny_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_onnx_flops_matches_hand_count_and_torch(tmp_path):
    import torch

    net = _tiny_net()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    # conv1: 16x16 out, 8 ch, 3*3*3 -> 55,296 MACs; depthwise: 16*16*8*9 = 18,432; pointwise 16*16*16*8 = 32,768;
    # linear 16*10 = 160
    macs = 16 * 16 * 8 * 27 + 16 * 16 * 8 * 9 + 16 * 16 * 16 * 8 + 160
    got = flops.onnx_flops(path)
    assert got["macs"] == macs and got["flops"] == 2 * macs
    assert got["uncounted"] == []
    assert flops.torch_flops(net, (1, 3, 32, 32))["flops"] == pytest.approx(2 * macs)


def test_onnx_flops_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        flops.onnx_flops(tmp_path / "nope.onnx")


# ---- machine / RSS ----------------------------------------------------------------------------------------------
CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma
processor\t: 1
model name\t: Example CPU 9000
physical id\t: 0
core id\t\t: 0
processor\t: 2
physical id\t: 0
core id\t\t: 1
"""


def test_cpuinfo_parsing():
    assert machine.cpu_model(CPUINFO) == "Example CPU 9000"
    assert machine.physical_cores(CPUINFO) == 2
    assert machine.cpu_flags(CPUINFO) == ["sse4_2", "avx", "avx2", "fma"]
    assert machine.physical_cores("") is None


def test_describe_has_what_comparisons_need():
    d = machine.describe(threads=1, peak=False)
    for k in ("cpu_model", "logical_cores", "libraries", "python", "timestamp", "hostname", "load_average_start"):
        assert k in d
    assert d["libraries"]["numpy"] == np.__version__
    assert d["peak"] is None
    p = machine.measure_peak_flops(threads=1, n=256, repeats=2)
    assert p["peak_gflops"] > 0 and p["matmul_n"] == 256
    with pytest.raises(ValueError):
        machine.measure_peak_flops(n=8)


def test_rss_probe_sees_an_allocation():
    with rss.RssProbe() as probe:
        block = np.ones(80 * 2 ** 20 // 8)  # 80 MB, touched
    # the peak, not the delta: other threads left by earlier tests may free memory during the block
    assert probe.peak is not None and probe.peak - probe.before > 60 * 2 ** 20
    assert probe.peak >= probe.after
    d = probe.as_dict()
    assert d["rss_peak_mb"] >= d["rss_delta_mb"]
    del block


# ---- reports and arguments --------------------------------------------------------------------------------------
def test_csv_and_json_writers(tmp_path):
    m = machine.describe(peak=False)
    rows = [{"key": "a/b1", "status": "ok", "p50_ms": 1.5, "nested": {"x": 1}},
            {"key": "b/b1", "status": "failed", "reason": "missing, \"quoted\"", "p50_ms": float("nan")}]
    rep = report.make_report("models", m, {"x": 1}, rows, samples_ms={"a/b1": [1.0, np.float32(2.0)]})
    jp = report.write_json(tmp_path / "out" / "r.json", rep)
    back = json.loads(jp.read_text())
    assert back["schema"] == report.SCHEMA and back["rows"][1]["p50_ms"] is None
    assert back["samples_ms"]["a/b1"] == [1.0, 2.0]
    cp = report.write_csv(tmp_path / "r.csv", rows, m)
    parsed = list(csv.DictReader(io.StringIO(cp.read_text())))
    assert [r["key"] for r in parsed] == ["a/b1", "b/b1"]
    assert parsed[1]["reason"] == 'missing, "quoted"' and parsed[1]["p50_ms"] == ""
    assert parsed[0]["machine_cpu_model"] == m["cpu_model"]
    assert "nested" not in parsed[0]
    assert not list(tmp_path.glob("*.tmp*"))


def test_argument_helpers_give_clear_errors():
    import argparse

    assert common.int_list("1, 8,8,32") == [1, 8, 32]
    for bad in ("0", "a", ",", "-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.int_list(bad)
    assert common.name_list("all", ["x", "y"], "things") is None
    with pytest.raises(ValueError, match="Did you mean 'onnxruntime'"):
        common.name_list("onnxrutime", ["onnxruntime", "tflite"], "backends")

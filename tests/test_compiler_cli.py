"""infantino-compile as users run it: argument errors before any work, arm64 via the CLI with MLflow, the parity
gate's exit code, atomic writes, the TensorRT preparation, onnx2tf (when installed) and the pretrained
mini_xception."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from ci_skip import missing

from infantino.compiler.cli import main
from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract import signing


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


# ---- errors before any work ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--target", "x46"], "unknown target 'x46'; valid: x64, arm64, jetson. Did you mean 'x64'?"),
    (["--formats", "onnx,tflte"], "unknown format 'tflte'; valid: onnx, tflite, tensorrt. Did you mean 'tflite'?"),
    (["--precision", "int4"], "unknown precision 'int4'; valid: fp32, fp16, int8."),
    (["--formats", "onnx", "--precision", "int8"], "precision 'int8' is not built by any selected format"),
    (["--target", "jetson", "--tflite-converter", "onnx2tf"], "--tflite-converter applies to format 'tflite'"),
    (["--trt-workspace", "512"], "--trt-workspace applies to format 'tensorrt'"),
    (["--int8-quantizer", "pt2f"], "unknown value for --int8-quantizer 'pt2f'; valid: pt2e, ai-edge-quantizer. "
                                   "Did you mean 'pt2e'?"),
    (["--target", "jetson", "--trt-batch", "4,2,8"], "--trt-batch wants 1 <= MIN <= OPT <= MAX"),
    (["--parity-threshold", "int8.min_cosin=0.9"], "unknown parity threshold 'min_cosin'"),
    (["--tflite-layout", "NCHW", "--tflite-converter", "onnx2tf"], None),  # onnx2tf missing or NHWC-only
])
def test_bad_arguments_fail_before_any_work(capsys, tmp_path, keypair, compiler_model_dir, args, message):
    out = tmp_path / "bundle"
    rc, _, err = _run(capsys, "--model", compiler_model_dir, "--key", keypair[0], "--no-real-face-guard", "--out", out, *args)
    assert rc == 2, err
    assert err.startswith("infantino-compile: error: ")
    if message:
        assert message in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_key_model_and_existing_out(capsys, tmp_path, keypair, compiler_model_dir, monkeypatch):
    monkeypatch.delenv("INFANTINO_SIGNING_KEY", raising=False)
    rc, _, err = _run(capsys, "--model", compiler_model_dir, "--out", tmp_path / "b")
    assert rc == 2 and "no signing key" in err and "keygen" in err
    rc, _, err = _run(capsys, "--model", tmp_path / "nope", "--key", keypair[0], "--no-real-face-guard", "--out", tmp_path / "b",
                      "--formats", "onnx")
    assert rc == 2 and "no such file or folder" in err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    rc, _, err = _run(capsys, "--model", compiler_model_dir, "--key", keypair[0], "--no-real-face-guard", "--out", tmp_path / "b")
    assert rc == 2 and "already exists; pass --force" in err


def test_help_and_unknown_command(capsys):
    for argv in (["--help"], ["keygen", "--help"], ["verify", "--help"], ["compile", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--trt-workspace" in capsys.readouterr().out
    rc, _, err = _run(capsys, "verfy", "x")
    assert rc == 2 and "Did you mean 'verify'?" in err
    rc, out, _ = _run(capsys, "formats")
    assert rc == 0 and "jetson" in out and "--tflite-converter" in out


def test_keygen_writes_a_private_key_only_the_owner_reads(capsys, tmp_path):
    rc, out, _ = _run(capsys, "keygen", "--out", tmp_path / "keys")
    assert rc == 0 and "signing.key" in out
    priv = tmp_path / "keys" / "signing.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in (tmp_path / "keys" / "signing.pub").read_bytes()
    fp = signing.key_id(signing.load_public_key(tmp_path / "keys" / "signing.pub"))
    assert f"fingerprint: {fp}" in out
    before = priv.read_bytes()
    rc, _, err = _run(capsys, "keygen", "--out", tmp_path / "keys")
    assert rc == 2 and "already exists" in err and priv.read_bytes() == before


# ---- arm64 through the CLI, logged to MLflow -----------------------------------------------------------------
def test_arm64_cli_compile_logs_to_mlflow(capsys, tmp_path, keypair, compiler_model_dir, mlflow_uri):
    out = tmp_path / "arm64"
    rc, stdout, err = _run(capsys, "--model", compiler_model_dir, "--target", "arm64", "--key", keypair[0], "--no-real-face-guard",
                           "--out", out, "--precision", "int8", "--calib-images", "16", "--parity-images", "16",
                           "--tar", "--mlflow", "--mlflow-uri", mlflow_uri, "--experiment", "compiler-tests",
                           "--threads", "1")
    assert rc == 0, err
    assert "extractor_int8.tflite" in stdout and "pass" in stdout
    b = load_bundle(out, public_key=keypair[1])
    m = b.manifest
    assert (m.target, m.precision, m.default_backend) == ("arm64", "int8", "tflite")
    assert sorted(a.file for a in m.artifacts) == ["extractor.onnx", "extractor_int8.tflite"]
    assert all(e.passed for e in m.parity)
    assert (tmp_path / "arm64.tar").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # staged 0700, published readable by the daemon
    # the private key is nowhere: not in the bundle, the .tar, the output, MLflow's store or its artifacts
    secret = [ln for ln in Path(keypair[0]).read_text().splitlines() if ln and not ln.startswith("-----")]
    assert secret
    files = [p for root in (out, Path(os.environ["INFANTINO_TEST_ARTIFACT_ROOT"]), Path(mlflow_uri[10:]).parent)
             for p in root.rglob("*") if p.is_file()] + [tmp_path / "arm64.tar"]
    leaks = [str(p) for p in files for s in secret if s.encode() in p.read_bytes()]
    assert not leaks and not any(s in stdout + err for s in secret)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("compiler-tests")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["target"] == "arm64"
    assert run.data.metrics["parity.extractor_int8.tflite.passed"] == 1.0
    assert 0.9 <= run.data.metrics["parity.extractor_int8.tflite.min_cosine"] <= 1.0
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/manifest.json", "bundle/manifest.sig", "bundle/extractor_int8.tflite"} <= logged
    assert "parity_report.json" in {f.path for f in client.list_artifacts(run.info.run_id)}


# ---- the parity gate and atomic writes ---------------------------------------------------------------------
def test_parity_failure_exits_nonzero_and_writes_nothing(capsys, tmp_path, keypair, compiler_model_dir):
    out = tmp_path / "b"
    base = ["--model", compiler_model_dir, "--key", keypair[0], "--no-real-face-guard", "--out", out, "--formats", "onnx",
            "--onnx-exporter", "torchscript", "--parity-images", "8", "--parity-threshold", "fp32.min_cosine=1.5"]
    rc, stdout, err = _run(capsys, *base)
    assert rc == 1
    assert "parity gate failed for extractor.onnx (fp32): min cosine" in err
    assert "FAIL" in stdout and "NOT WRITTEN" in stdout
    assert not out.exists() and _leftovers(tmp_path) == []
    rc, _, err = _run(capsys, *base, "--allow-parity-failure")
    assert rc == 0, err
    m = load_bundle(out, public_key=keypair[1]).manifest
    assert [e.passed for e in m.parity] == [False]
    rc, stdout, _ = _run(capsys, "verify", out, "--pub", keypair[1])
    assert rc == 0 and "failed parity: extractor.onnx" in stdout


def test_failed_compile_keeps_the_previous_bundle(tmp_path, keypair, compiler_model_dir, monkeypatch):
    from infantino.compiler.formats import onnx as onnx_fmt
    from infantino.compiler.pipeline import CompileOptions, compile_bundle

    out = tmp_path / "b"
    opts = CompileOptions(real_face_guard=False, model=str(compiler_model_dir), out=str(out), key=str(keypair[0]), formats=["onnx"],
                          parity_images=4, format_options={"onnx": {"exporter": "torchscript"}}, mlflow=False)
    compile_bundle(opts)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(self, ctx, precision, layout):
        (ctx.bundle_dir / "extractor.onnx").write_bytes(b"half written")
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(onnx_fmt.OnnxExporter, "export", broken)
    opts.force = True
    with pytest.raises(RuntimeError, match="converter crashed"):
        compile_bundle(opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []
    load_bundle(out, public_key=keypair[1])


def test_parity_compare_catches_a_wrong_artifact():
    from infantino.compiler.parity import compare
    from infantino.runtime.contract.head import Head

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(32, 64)).astype(np.float32)
    w = (rng.normal(size=(64, 7)).astype(np.float32), np.zeros(7, np.float32))
    head = Head(weights=w, version=1, extractor_id="x")
    assert compare(ref, ref + 1e-7, head, "fp32", "a").passed
    noisy = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    e = compare(noisy, noisy, head, "int8", "b")
    assert e.passed
    e = compare(ref, noisy, head, "int8", "c")
    assert not e.passed and e.min_cosine < 0.99 and e.top1_agreement < 1.0
    e = compare(ref, ref * 1.01, head, "fp32", "d")  # a 1 % scale error: cosine 1, top-1 1, but max diff fails
    assert not e.passed and e.min_cosine > 0.99999 and e.max_abs_diff > e.thresholds["max_abs_diff"]


# ---- TensorRT: everything up to the engine build -------------------------------------------------------------
@pytest.fixture(scope="module")
def compiler_face_folder(tmp_path_factory) -> Path:
    """An image folder of face crops (one sub-folder per class), as --calib-data expects."""
    from infantino.trainer.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("faces") / "faces", 40, seed=3, size=72, difficulty="medium")


def test_jetson_bundle_carries_prepared_onnx_and_build_settings(capsys, tmp_path, keypair, compiler_model_dir,
                                                                compiler_face_folder):
    import onnx

    from infantino.runtime.backends import tensorrt_build as tb

    out = tmp_path / "jetson"
    rc, stdout, err = _run(capsys, "--model", compiler_model_dir, "--target", "jetson", "--key", keypair[0], "--no-real-face-guard",
                           "--out", out, "--precision", "fp16,int8", "--calib-data", compiler_face_folder,
                           "--calib-images", "16", "--parity-images", "8", "--trt-batch", "1,2,4",
                           "--trt-workspace", "512", "--onnx-exporter", "torchscript")
    assert rc == 0, err
    b = load_bundle(out, public_key=keypair[1])
    m = b.manifest
    assert (m.target, m.precision, m.default_backend) == ("jetson", "fp16", "tensorrt")
    trt = [a for a in m.artifacts if a.format == "tensorrt_onnx"]
    assert [a.precision for a in trt] == ["fp16", "int8"] and {a.file for a in trt} == {"tensorrt/extractor.onnx"}
    for a in trt:
        s = a.tensorrt
        assert s["precision"] == a.precision and s["workspace_mb"] == 512
        assert s["profile"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
        assert s["onnx_sha256"] == a.sha256 and a.dynamic_batch
        settings = tb.TensorRTSettings.from_dict(s)
        assert settings.max_batch == 4 and settings.input_shape == (3, 64, 64)
        name = tb.plan_cache_name(a.sha256, s, tensorrt_version="10.3.0", gpu_name="Orin (nvgpu)")
        assert name == f"{a.sha256[:16]}-trt10.3.0-orin-nvgpu-{a.precision}.plan"
    int8 = trt[1].tensorrt
    assert int8["calibration_data"] == "calibration.npy"
    assert [f["file"] for f in int8["files"]] == ["tensorrt/calibration.npy"]  # hashed and verified by load_bundle
    calib = np.load(out / "tensorrt" / "calibration.npy")
    assert calib.shape == (16, 3, 64, 64) and calib.dtype == np.float32
    # the prepared ONNX: shapes inferred, static C/H/W, dynamic batch
    model = onnx.load(str(out / "tensorrt" / "extractor.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert len(model.graph.value_info) > 0
    # parity: checked in onnxruntime here, with the reason stated
    notes = {e.file: e.skipped_reason for e in m.parity}
    assert "onnxruntime" in notes["tensorrt/extractor.onnx"] and "tensorrt" in notes["tensorrt/extractor.onnx"]
    assert "folder" in stdout or "faces" in stdout
    # a tampered calibration file is caught by the runtime's verifier
    (out / "tensorrt" / "calibration.npy").write_bytes(b"x" * 10)
    with pytest.raises(Exception, match="sha256"):
        load_bundle(out, public_key=keypair[1])


def test_tensorrt_build_settings_and_missing_library():
    from infantino.runtime.backends import tensorrt_build as tb
    from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError

    with pytest.raises(InfantinoError, match="1 <= min <= opt <= max"):
        tb.TensorRTSettings(min_batch=2, opt_batch=1, max_batch=4)
    with pytest.raises(InfantinoError, match="precision"):
        tb.TensorRTSettings(precision="int4")
    assert tb.gpu_slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    with pytest.raises(InfantinoError, match="hex digest"):
        tb.plan_cache_name("not-a-sha", {"precision": "fp16"}, "10.0", "x")
    s = tb.TensorRTSettings(precision="int8", input_shape=(1, 64, 64), calibration_data="c.npy")
    assert tb.TensorRTSettings.from_dict({**s.to_dict(), "files": [], "cache_name_rule": "x"}) == s
    reason = tb.build_unavailable_reason()
    if reason is not None:
        assert reason.startswith("tensorrt:")
        with pytest.raises(BackendUnavailable, match="infantino\\[tensorrt\\]"):
            tb.build_plan("x.onnx", s)


def test_tensorrt_probe_reports_a_host_with_tensorrt_but_no_gpu(monkeypatch):
    """The probe's path past the import (a host with TensorRT's wheel but no usable GPU) names the reason; a local
    that shadowed the `cudart` loader once made it raise UnboundLocalError there instead. CUDA's answers are
    stand-ins: (error, count) tuples as cuda-python returns them."""
    from infantino.runtime.backends import tensorrt_build as tb

    class NoGpu:
        @staticmethod
        def cudaGetDeviceCount():
            return (0, 0)

    class Broken:
        @staticmethod
        def cudaGetDeviceCount():
            return (35, 0)  # cudaErrorInsufficientDriver

    monkeypatch.setattr(tb, "import_trt", lambda: object())
    monkeypatch.setattr(tb, "cudart", lambda: NoGpu)
    assert tb.build_unavailable_reason() == "tensorrt: CUDA reports no GPU"
    monkeypatch.setattr(tb, "cudart", lambda: Broken)
    assert tb.build_unavailable_reason() == "tensorrt: CUDA is not usable here (CUDA error 35)"


@pytest.mark.gpu
def test_tensorrt_plan_builds_on_a_gpu_host(tmp_path, keypair, compiler_model_dir):
    from infantino.compiler.pipeline import CompileOptions, compile_bundle
    from infantino.runtime.backends import tensorrt_build as tb

    reason = tb.build_unavailable_reason()
    if reason is not None:
        pytest.skip(f"the engine build needs TensorRT and an NVIDIA GPU: {reason}")
    r = compile_bundle(CompileOptions(real_face_guard=False, model=str(compiler_model_dir), target="jetson", out=str(tmp_path / "b"),
                                      key=str(keypair[0]), parity_images=8, mlflow=False))
    plans = [a for a in r.manifest.artifacts if a.format == "tensorrt_plan"]
    assert plans and plans[0].tensorrt["gpu_name"] and plans[0].tensorrt["tensorrt_version"]
    assert all(e.passed for e in r.manifest.parity)


# ---- optional converters and other backbones --------------------------------------------------------------
def test_onnx2tf_converter_when_tensorflow_is_installed(tmp_path, keypair, compiler_model_dir):
    import importlib.util

    missing = [m for m in ("tensorflow", "onnx2tf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"--tflite-converter onnx2tf needs the [tf] extra ({', '.join(missing)} not installed); "
                    "TensorFlow is deliberately not part of the default install")
    from infantino.compiler.pipeline import CompileOptions, compile_bundle

    r = compile_bundle(CompileOptions(real_face_guard=False, model=str(compiler_model_dir), target="arm64", out=str(tmp_path / "b"),
                                      key=str(keypair[0]), precisions=["fp32", "int8"], calib_images=16,
                                      parity_images=16, mlflow=False, format_options={"tflite": {"converter": "onnx2tf"}}))
    assert all(e.passed for e in r.manifest.parity)
    assert "onnx2tf" in r.manifest.toolchain


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8", marks=pytest.mark.slow)])
def test_pretrained_mini_xception_gray_64_compiles_and_passes_parity(tmp_path, keypair, precision):
    from infantino.compiler.pipeline import CompileOptions, compile_bundle
    from infantino.runtime.contract.errors import InfantinoError
    from infantino.runtime.contract.preprocess import PreprocessSpec

    try:
        model_dir = _mini_xception_dir(tmp_path / "mx")
    except (InfantinoError, OSError) as e:
        missing(f"fer2013 mini_xception weights unavailable here: {e}")
    r = compile_bundle(CompileOptions(real_face_guard=False, model=str(model_dir), target="arm64", out=str(tmp_path / "b"),
                                      key=str(keypair[0]), precisions=[precision], calib_images=24,
                                      parity_images=24, mlflow=False))
    m = r.manifest
    assert m.preprocess == PreprocessSpec.fer2013(64) and m.model.backbone == "mini_xception"
    assert {(a.format, a.layout) for a in m.artifacts} == {("onnx", "NCHW"), ("tflite", "NHWC")}
    assert all(e.passed for e in m.parity), m.parity
    b = load_bundle(r.bundle_dir, public_key=keypair[1])
    x, _ = b.reference()
    assert x.shape[1:] == (1, 64, 64)


def _mini_xception_dir(out: Path) -> Path:
    """extractor.pt of the pretrained mini_xception (FER-2013 weights) and a head fitted on its embeddings."""
    import torch
    from sklearn.neural_network import MLPClassifier

    from infantino.runtime.contract.head import Head
    from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess
    from infantino.trainer.extractor import ExtractorConfig, build_extractor, extractor_id, save_checkpoint
    from infantino.trainer.synth import synth_arrays

    cfg = ExtractorConfig(backbone="mini_xception", img_size=64, pretrained="fer2013",
                          preprocess=PreprocessSpec.fer2013(64).model_dump(mode="json"))
    model = build_extractor(cfg).eval()
    images, labels = synth_arrays(140, seed=2, size=64, difficulty="easy")
    with torch.no_grad():
        emb = model(torch.from_numpy(preprocess(images, cfg.spec, "NCHW"))).numpy()
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(emb, labels)
    out.mkdir(parents=True)
    save_checkpoint(out / "extractor.pt", model, cfg)
    (out / "head.infh").write_bytes(Head.from_sklearn(mlp, version=1, extractor_id=extractor_id(model)).to_bytes())
    return out


def test_targets_table_matches_the_format_registry():
    from infantino.compiler.formats import create_exporter, get_format, list_formats
    from infantino.compiler.targets import TARGETS
    from infantino.runtime.backends import list_backends

    assert [f.name for f in list_formats()] == ["onnx", "tflite", "tensorrt"]
    for t in TARGETS.values():
        assert t.formats[0] == "onnx" and t.default_backend in list_backends()
        for f in t.formats:
            spec = get_format(f)
            assert set(t.precisions[f]) <= set(spec.precisions) and t.layout(f) in spec.layouts
        assert any(t.default_precision in t.precisions[f] for f in t.formats)
    with pytest.raises(ValueError, match="Did you mean 'tensorrt'"):
        create_exporter("tensorrtt")
    with pytest.raises(ValueError, match="unknown tflite option 'convertr'.*Did you mean 'converter'"):
        create_exporter("tflite", {"convertr": "onnx2tf"})
    assert create_exporter("tensorrt", workspace_mb=256).options.workspace_mb == 256


# ---- the registry: --model models:/infantino-extractor@champion -----------------------------------------------
def test_compile_from_the_model_registry(tmp_path, keypair, compiler_model_dir, mlflow_uri, monkeypatch):
    """The issue's headline command: the extractor and its head come from MLflow by alias (head follows the alias)."""
    import torch

    from infantino.compiler.pipeline import CompileOptions, compile_bundle
    from infantino.runtime.contract.preprocess import preprocess
    from infantino.trainer import tracking
    from infantino.trainer.extractor import extractor_id, load_extractor
    from infantino.trainer.online_head import OnlineHead
    from infantino.trainer.synth import synth_arrays

    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    model, cfg = load_extractor(compiler_model_dir / "extractor.pt")
    images, labels = synth_arrays(70, seed=4, size=64)
    with torch.no_grad():
        emb = model(torch.from_numpy(preprocess(images, cfg.spec, "NCHW"))).numpy()
    head = OnlineHead(extractor_id=extractor_id(model)).fit(emb, labels, epochs=3)
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    head.save_dir(head_dir)
    tracker = tracking.FitTracker(uri=mlflow_uri, experiment="compiler-tests-registry")
    reg = tracker.log_models(compiler_model_dir / "extractor.pt", model, head_dir, head.mlp,
                             extractor_id=extractor_id(model), head_version=head.version,
                             head_sha256=head.to_head().sha256)
    tracker.finish()
    alias = "compiler-test"
    client = tracking.mlflow_client()
    client.set_registered_model_alias(tracking.EXTRACTOR_MODEL, alias, reg["extractor_version"])
    client.set_registered_model_alias(tracking.HEAD_MODEL, alias, reg["head_version"])

    r = compile_bundle(CompileOptions(real_face_guard=False, model=f"models:/infantino-extractor@{alias}", target="x64",
                                      out=str(tmp_path / "b"), key=str(keypair[0]), formats=["onnx"],
                                      parity_images=8, mlflow_uri=mlflow_uri, experiment="compiler-tests-registry",
                                      format_options={"onnx": {"exporter": "torchscript"}}))
    m = r.manifest
    assert (m.model.name, m.model.version) == ("infantino-extractor", reg["extractor_version"])
    assert m.model.source == f"models:/infantino-extractor@{alias}"
    assert m.extractor_id == extractor_id(model) and m.head.version == head.version
    assert r.mlflow_run_id  # a models:/ source logs the compile to MLflow by default
    run = client.get_run(r.mlflow_run_id)
    assert run.data.tags["extractor_id"] == m.extractor_id and run.info.status == "FINISHED"


def test_img_size_override_changes_the_input_everywhere(capsys, tmp_path, keypair, compiler_model_dir):
    import onnx

    out = tmp_path / "b72"
    rc, _, err = _run(capsys, "--model", compiler_model_dir, "--key", keypair[0], "--no-real-face-guard", "--out", out, "--formats", "onnx",
                      "--onnx-exporter", "torchscript", "--img-size", "72", "--parity-images", "4", "-q")
    assert rc == 0, err
    b = load_bundle(out, public_key=keypair[1])
    assert b.manifest.preprocess.input_size == (72, 72)
    assert b.reference()[0].shape == (4, 3, 72, 72)
    dims = onnx.load(str(out / "extractor.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 72, 72]
    assert all(e.passed for e in b.manifest.parity)

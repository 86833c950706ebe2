"""The compiler end to end: real exports, real runtimes, real signatures (tiny test_efficientnet at 64 px)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from infantino.compiler.cli import main as compile_main
from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.errors import BundleError
from infantino.runtime.contract.manifest import Manifest


# ---- the compiled x64 bundle (fixture compiled_bundle) ------------------------------------------------------
def test_x64_bundle_has_every_artifact_in_its_layout(compiled_bundle):
    m = Manifest.model_validate_json((compiled_bundle.path / "manifest.json").read_text())
    got = {(a.file, a.format, a.precision, a.layout) for a in m.artifacts}
    assert got == {("extractor.onnx", "onnx", "fp32", "NCHW"),
                   ("extractor_fp32.tflite", "tflite", "fp32", "NHWC"),
                   ("extractor_fp16.tflite", "tflite", "fp16", "NHWC"),
                   ("extractor_int8.tflite", "tflite", "int8", "NHWC")}
    assert (m.target, m.precision, m.default_backend) == ("x64", "fp32", "onnxruntime")
    assert m.preprocess.input_size == (64, 64) and m.embedding_dim == 64
    assert m.model.backbone == "test_efficientnet"
    for key in ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert"):
        assert key in m.toolchain
    # sizes on disk match the manifest; fp16 and int8 are smaller than fp32
    sizes = {a.precision: a.size_bytes for a in m.artifacts if a.format == "tflite"}
    for a in m.artifacts:
        assert (compiled_bundle.path / a.file).stat().st_size == a.size_bytes
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_x64_bundle_verifies_and_passed_parity(compiled_bundle):
    from infantino.trainer.extractor import extractor_id, load_extractor

    b = load_bundle(compiled_bundle.path, public_key=compiled_bundle.public_key)
    m = b.manifest
    assert {e.file for e in m.parity} == {a.file for a in m.artifacts}
    for e in m.parity:
        assert e.passed, e
        assert e.n_images == 24 and e.top1_agreement >= e.thresholds["top1_agreement"]
        assert e.min_cosine >= e.thresholds["min_cosine"] and e.max_abs_diff <= e.thresholds["max_abs_diff"]
    strict = {e.precision: e.thresholds["min_cosine"] for e in m.parity}
    assert strict["fp32"] > strict["fp16"] > strict["int8"]
    model, _ = load_extractor(compiled_bundle.model_dir / "extractor.pt")
    assert m.extractor_id == extractor_id(model) == b.head.extractor_id
    assert b.head.version == m.head.version == 3
    assert (compiled_bundle.path / "head.infh").read_bytes() == (compiled_bundle.model_dir / "head.infh").read_bytes()


def test_x64_reference_matches_pytorch(compiled_bundle):
    import torch

    from infantino.trainer.extractor import load_extractor

    b = load_bundle(compiled_bundle.path, public_key=compiled_bundle.public_key)
    x, emb = b.reference()
    assert x.shape == (8, 3, 64, 64) and x.dtype == np.float32 and emb.shape == (8, 64)
    model, _ = load_extractor(compiled_bundle.model_dir / "extractor.pt")
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), emb, rtol=1e-5, atol=1e-6)


def test_onnx_has_dynamic_batch_and_metadata(compiled_bundle):
    import onnx
    import onnxruntime as ort

    path = compiled_bundle.path / "extractor.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["infantino.classes"])[0] == "angry"
    assert json.loads(meta["infantino.preprocess"])["input_size"] == [64, 64]
    assert meta["infantino.extractor_id"] == json.loads((compiled_bundle.path / "manifest.json").read_text())[
        "extractor_id"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, emb = load_bundle(compiled_bundle.path, public_key=compiled_bundle.public_key).reference()
    for n in (1, 3, 8):
        out = sess.run(["embedding"], {"input": x[:n]})[0]
        assert out.shape == (n, 64)
        np.testing.assert_allclose(out, emb[:n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.95)])
def test_tflite_runs_in_litert_with_nhwc_float_input(compiled_bundle, precision, min_cos):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(compiled_bundle.path / f"extractor_{precision}.tflite"), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, 64, 64, 3]
    x, emb = load_bundle(compiled_bundle.path, public_key=compiled_bundle.public_key).reference()
    got = []
    for i in range(len(x)):
        xi = np.ascontiguousarray(x[i:i + 1].transpose(0, 2, 3, 1))
        if inp["dtype"] != np.float32:  # PT2E int8 models take quantized input (runtime backends handle it)
            s, z = inp["quantization"]
            xi = np.clip(np.round(xi / s + z), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            y = (y - z) * s
        got.append(y)
    got = np.concatenate(got)
    cos = (got * emb).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(emb, axis=1)
    assert cos.min() >= min_cos


def test_tar_holds_the_same_bundle_and_verifies(compiled_bundle):
    with tarfile.open(compiled_bundle.tar) as tf:
        names = sorted(m.name for m in tf.getmembers() if m.isfile())
    on_disk = sorted(p.relative_to(compiled_bundle.path).as_posix() for p in compiled_bundle.path.rglob("*")
                     if p.is_file())
    assert names == on_disk and "manifest.sig" in names
    b = load_bundle(compiled_bundle.tar, public_key=compiled_bundle.public_key)
    assert len(b.manifest.artifacts) == 4


def test_private_key_never_enters_the_bundle(compiled_bundle):
    secret = Path(compiled_bundle.private_key).read_bytes()
    for p in compiled_bundle.path.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"PRIVATE KEY" not in data and secret not in data, p


def test_verify_cli_accepts_the_bundle(compiled_bundle, capsys):
    assert compile_main(["verify", str(compiled_bundle.path), "--pub", str(compiled_bundle.public_key)]) == 0
    assert "OK" in capsys.readouterr().out


def test_tampering_with_any_file_fails_verification(compiled_bundle, tmp_path, capsys):
    files = sorted(p.relative_to(compiled_bundle.path).as_posix() for p in compiled_bundle.path.rglob("*")
                   if p.is_file())
    assert {"manifest.json", "manifest.sig", "head.infh", "reference.npz"} <= set(files)
    for i, rel in enumerate(files):
        d = tmp_path / f"b{i}"
        shutil.copytree(compiled_bundle.path, d)
        p = d / rel
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01  # flip one bit in the middle
        p.write_bytes(bytes(data))
        with pytest.raises(BundleError):
            load_bundle(d, public_key=compiled_bundle.public_key)
        if i == 0:  # the CLI goes through the same verifier and exits non-zero
            assert compile_main(["verify", str(d), "--pub", str(compiled_bundle.public_key)]) == 2
            assert "refused" in capsys.readouterr().err


def test_verify_refuses_another_key(compiled_bundle, tmp_path):
    from infantino.runtime.contract.signing import generate_keypair

    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(BundleError, match="signature"):
        load_bundle(compiled_bundle.path, public_key=tmp_path / "other.pub")

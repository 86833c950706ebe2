"""load_bundle: a good bundle loads (directory or .tar); every kind of bad bundle is refused naming the check."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest

from fixtures_runtime import runtime_rehash, runtime_sign_manifest
from infantino.runtime.bundle import BundleCheckError, load_bundle
from infantino.runtime.contract.errors import BundleError


def _refused(path, pub, check, file=None):
    with pytest.raises(BundleCheckError) as ei:
        load_bundle(path, public_key=pub)
    e = ei.value
    assert isinstance(e, BundleError)
    assert e.check == check, str(e)
    assert f"{check} check failed" in str(e)
    if file is not None:
        assert e.file == file and file in str(e), str(e)
    return str(e)


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def test_good_bundle_loads(runtime_bundle, keypair):
    b = load_bundle(runtime_bundle, public_key=keypair[1])
    m = b.manifest
    assert b.extractor_id == m.extractor_id == b.head.extractor_id
    assert b.head.version == m.head.version == 1
    assert b.artifact_path(m.artifacts[0]).is_file()
    x, e = b.reference()
    assert x.dtype == np.float32 and x.shape[1:] == (3, 64, 64) and e.shape == (x.shape[0], 64)
    assert b.preprocess_spec.input_size == (64, 64)


def test_public_key_from_env_and_missing_key(runtime_bundle, keypair, monkeypatch):
    monkeypatch.setenv("INFANTINO_PUBLIC_KEY", str(keypair[1]))
    assert load_bundle(runtime_bundle).head.version == 1
    monkeypatch.delenv("INFANTINO_PUBLIC_KEY")
    msg = _refused(runtime_bundle, None, "signature")
    assert "no public key configured" in msg and "INFANTINO_PUBLIC_KEY" in msg
    assert load_bundle(runtime_bundle, public_key=keypair[3]).head.version == 1  # a key object
    assert load_bundle(runtime_bundle, public_key=keypair[1].read_bytes()).head.version == 1  # PEM bytes


def test_tampered_manifest_fails_the_signature(runtime_bundle_copy, keypair):
    d = runtime_bundle_copy
    raw = (d / "manifest.json").read_bytes().replace(b'"version": 1', b'"version": 9', 1)
    (d / "manifest.json").write_bytes(raw)
    _refused(d, keypair[1], "signature", "manifest.json")


def test_other_key_and_bad_signature_file(runtime_bundle_copy, keypair, tmp_path):
    from infantino.runtime.contract import signing

    signing.generate_keypair(tmp_path / "o.key", tmp_path / "o.pub")
    _refused(runtime_bundle_copy, tmp_path / "o.pub", "signature", "manifest.json")
    (runtime_bundle_copy / "manifest.sig").write_bytes(b"short")
    _refused(runtime_bundle_copy, keypair[1], "signature", "manifest.sig")
    (runtime_bundle_copy / "manifest.sig").unlink()
    _refused(runtime_bundle_copy, keypair[1], "files", "manifest.sig")


def test_signature_is_checked_before_json_is_parsed(runtime_bundle_copy, keypair):
    (runtime_bundle_copy / "manifest.json").write_bytes(b"{not json")
    _refused(runtime_bundle_copy, keypair[1], "signature")


@pytest.mark.parametrize("victim", ["extractor.onnx", "head.infh", "reference.npz"])
def test_corrupt_file_fails_sha256_naming_it(runtime_bundle_copy, keypair, victim):
    p = runtime_bundle_copy / victim
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    _refused(runtime_bundle_copy, keypair[1], "sha256", victim)


def test_missing_listed_file(runtime_bundle_copy, keypair):
    (runtime_bundle_copy / "extractor_nhwc.onnx").unlink()
    _refused(runtime_bundle_copy, keypair[1], "files", "extractor_nhwc.onnx")


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("extractor_id"), "extractor_id"),
    (lambda m: m.update(schema_version=2), "schema_version"),
    (lambda m: m.update(surprise=1), "surprise"),
    (lambda m: m["artifacts"][0].update(format="pytorch"), "artifacts.0.format"),
    (lambda m: m["preprocess"].update(mean=[0.5]), "preprocess"),
])
def test_schema_errors_name_the_field(runtime_bundle_copy, keypair, change, field):
    m = _manifest(runtime_bundle_copy)
    change(m)
    runtime_sign_manifest(runtime_bundle_copy, m, keypair[2])  # correctly signed, but not a valid manifest
    msg = _refused(runtime_bundle_copy, keypair[1], "schema", "manifest.json")
    assert field in msg


def test_signed_invalid_json_fails_schema(runtime_bundle_copy, keypair):
    from infantino.runtime.contract.signing import sign

    raw = b"[1, 2"
    (runtime_bundle_copy / "manifest.json").write_bytes(raw)
    (runtime_bundle_copy / "manifest.sig").write_bytes(sign(keypair[2], raw))
    assert "not valid JSON" in _refused(runtime_bundle_copy, keypair[1], "schema")


def test_path_escaping_the_bundle_is_refused(runtime_bundle_copy, keypair):
    m = _manifest(runtime_bundle_copy)
    m["artifacts"][0]["file"] = "../outside.onnx"
    runtime_sign_manifest(runtime_bundle_copy, m, keypair[2])
    _refused(runtime_bundle_copy, keypair[1], "schema", "../outside.onnx")


def test_head_that_does_not_fit_the_manifest(runtime_bundle_copy, keypair):
    from infantino.runtime.contract.head import Head

    d = runtime_bundle_copy
    head = Head.from_bytes((d / "head.infh").read_bytes())
    (d / "head.infh").write_bytes(head.replace(extractor_id="f" * 64).to_bytes())
    m = runtime_rehash(d, _manifest(d))
    runtime_sign_manifest(d, m, keypair[2])
    assert "trained on extractor ffffffffffff" in _refused(d, keypair[1], "head", "head.infh")


def test_tar_bundle_loads_via_cache_and_tampered_tar_is_refused(runtime_bundle, keypair, tmp_path, monkeypatch):
    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    tar = tmp_path / "bundle.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(runtime_bundle, arcname="bundle-v1")
    b = load_bundle(tar, public_key=keypair[1])
    assert str(b.root).startswith(str(tmp_path / "cache")) and b.head.version == 1
    assert load_bundle(tar, public_key=keypair[1]).root == b.root  # extracted once, verified every time

    # A damaged cache copy is caught (every load re-verifies) and healed from the tar.
    onnx = b.root / "extractor.onnx"
    good = onnx.read_bytes()
    onnx.write_bytes(good[:-10])
    assert load_bundle(tar, public_key=keypair[1]).head.version == 1
    assert onnx.read_bytes() == good

    # A tar whose content was tampered with is refused.
    bad_dir = tmp_path / "bad"
    shutil.copytree(runtime_bundle, bad_dir)
    (bad_dir / "extractor.onnx").write_bytes(good[:-10])
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        tf.add(bad_dir, arcname="b")
    _refused(bad, keypair[1], "sha256", "extractor.onnx")

    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tf:
        for p in sorted(runtime_bundle.iterdir()):
            if p.name != "head.infh":
                tf.add(p, arcname=p.name)
    _refused(flat, keypair[1], "files", "head.infh")


def test_unsafe_or_broken_tar_is_refused(runtime_bundle, keypair, tmp_path, monkeypatch):
    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        tf.add(runtime_bundle / "manifest.json", arcname="../manifest.json")
    assert "unsafe tar member" in _refused(evil, keypair[1], "files")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file at all" * 50)
    assert "cannot read tar" in _refused(broken, keypair[1], "files")
    _refused(tmp_path / "nope", keypair[1], "files")

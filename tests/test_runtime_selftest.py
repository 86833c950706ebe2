"""Every device self-tests what it runs: a backend must reproduce the bundle's reference.npz embeddings within
the manifest's tolerance, else it is refused and `auto` falls back. Tested with a tampered-but-signed artifact
(a compromised compile: wrong weights, a valid signature)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infantino.compiler.bundle_writer import manifest_bytes
from infantino.runtime.backends import SelfTestFailed, create_backend
from infantino.runtime.bundle import load_bundle, sha256_file
from infantino.runtime.contract.manifest import Manifest
from infantino.runtime.contract.signing import sign
from infantino.runtime.pipeline import Pipeline


def _tamper_onnx_and_resign(bundle_dir, private_key, scale: float = 1.5) -> None:
    """Scale the ONNX extractor's weights (a wrong artifact), then fix its sha256/size and re-sign the manifest."""
    import onnx
    from onnx import numpy_helper

    path = bundle_dir / "extractor.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 4:  # conv kernels
            init.CopyFrom(numpy_helper.from_array((w * scale + rng.normal(0, 0.05, w.shape)).astype(np.float32),
                                                  init.name))
    onnx.save(model, str(path))
    m = Manifest.model_validate(json.loads((bundle_dir / "manifest.json").read_text()))
    for a in m.artifacts:
        if a.file == "extractor.onnx":
            a.sha256, a.size_bytes = sha256_file(path), path.stat().st_size
    raw = manifest_bytes(m)
    (bundle_dir / "manifest.json").write_bytes(raw)
    (bundle_dir / "manifest.sig").write_bytes(sign(private_key, raw))


def test_a_good_backend_passes_its_self_test(compiled_bundle, keypair):
    bundle = load_bundle(compiled_bundle.path, public_key=keypair[1])
    with create_backend("onnxruntime", bundle, threads=1) as be:
        assert be.self_test is not None and be.self_test.passed and be.self_test.n_images >= 1
        assert be.self_test.min_cosine >= 0.99999


def test_a_tampered_but_signed_artifact_is_refused_and_auto_falls_back(compiled_bundle_copy, keypair):
    _tamper_onnx_and_resign(compiled_bundle_copy, keypair[2])
    bundle = load_bundle(compiled_bundle_copy, public_key=keypair[1])  # the signature checks out
    with pytest.raises(SelfTestFailed, match=r"extractor.onnx fails its self-test .*min cosine"):
        create_backend("onnxruntime", bundle, threads=1)
    with Pipeline(bundle, backend="auto", threads=1) as pipe:  # falls back to a LiteRT artifact
        assert pipe.backend.artifact.file != "extractor.onnx" and pipe.backend.self_test.passed
        assert pipe.predict(np.zeros((120, 160, 3), np.uint8)) is not None
    # opting out (benchmarks of a known-bad artifact) still builds it
    with create_backend("onnxruntime", bundle, threads=1, self_test=False) as be:
        assert be.self_test is None

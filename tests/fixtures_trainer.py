"""Trainer fixtures other parts may reuse: a small synthetic image folder and a small trained run (no MLflow).

trainer_dataset: Path of an image folder (7 class sub-folders, 64 px adult faces, easy difficulty).
trainer_heldout: Path of another folder from a different seed (never trained on).
trainer_run:     FitResult of `fit` on trainer_dataset (timm test_efficientnet, 64 px, about a minute of CPU):
                 out_dir holds extractor.pt, head_state.npz, head.infh, confusion.png, metrics.json.
"""

from __future__ import annotations

import pytest

TRAINER_IMG = 64
TRAINER_N = 700        # 100 per class
TRAINER_HELDOUT_N = 280


@pytest.fixture(scope="session")
def trainer_dataset(tmp_path_factory):
    """A small synthetic image folder (adult, easy, 64 px, seed 0, 100 faces per class)."""
    from infantino.trainer.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("trainer") / "synth", TRAINER_N, domain="adult", seed=0,
                         size=TRAINER_IMG, difficulty="easy")


@pytest.fixture(scope="session")
def trainer_heldout(tmp_path_factory):
    """Held-out synthetic faces (adult, easy, 64 px) from another seed."""
    from infantino.trainer.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("trainer") / "heldout", TRAINER_HELDOUT_N, domain="adult", seed=101,
                         size=TRAINER_IMG, difficulty="easy")


@pytest.fixture(scope="session")
def trainer_run(tmp_path_factory, trainer_dataset):
    """A real short training run: test_efficientnet at 64 px on trainer_dataset, no MLflow (FitResult)."""
    from infantino.trainer.fit import FitConfig, fit

    cfg = FitConfig(data=str(trainer_dataset), out=str(tmp_path_factory.mktemp("trainer") / "run"),
                    backbone="test_efficientnet", img_size=TRAINER_IMG, epochs=10, max_steps=200,
                    patience=0, seed=0, tracking=False, progress=False, real_face_guard=False)
    return fit(cfg)

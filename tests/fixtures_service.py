"""Update-service fixtures: a fitted OnlineHead on disk (head_state.npz + head.infh) and sample helpers."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

SERVICE_EXT = "5" * 64


def make_online_head_dir(d, extractor_id: str = SERVICE_EXT, hidden=(32,), seed: int = 0):
    """Fit a small OnlineHead on random embeddings and write head_state.npz + head.infh into d."""
    from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(210, 64)).astype(np.float32)
    y = np.arange(210) % 7
    X[np.arange(210), y] += 2.0  # learnable
    oh = OnlineHead(OnlineHeadConfig(hidden=tuple(hidden), seed=seed, calib_holdout=0.0), extractor_id=extractor_id)
    oh.fit(X, y, epochs=3)
    d.mkdir(parents=True, exist_ok=True)
    oh.save_dir(d)
    return d


@pytest.fixture(scope="session")
def service_head_dir(tmp_path_factory):
    """A directory with head_state.npz and head.infh (OnlineHead, extractor SERVICE_EXT, 32 hidden units)."""
    return make_online_head_dir(tmp_path_factory.mktemp("online_head"))


def service_sample(i: int, device: str = "cam-1", fleet: str = "nursery", extractor_id: str = SERVICE_EXT,
                   sample_id: str | None = None, seed: int = 1):
    """A labelled sample (SampleMessage) with a class-shaped random embedding."""
    from infantino.runtime.contract.classes import CLASSES
    from infantino.runtime.contract.messages import SampleMessage

    rng = np.random.default_rng(seed * 100003 + i)
    k = i % 7
    e = rng.normal(size=64)
    e[k] += 2.0
    return SampleMessage(device_id=device, fleet=fleet, sample_id=sample_id or f"{device}-{i}-{uuid.uuid4().hex[:6]}",
                         embedding=[float(v) for v in e], extractor_id=extractor_id, label=CLASSES[k])


@pytest.fixture(scope="session")
def sim_head(tmp_path_factory):
    """The simulated fleet's starting head (benchmarks.fleetsim: class embeddings, calibrated)."""
    from infantino.benchmarks.fleetsim import fit_sim_head

    return fit_sim_head(tmp_path_factory.mktemp("sim_head"))

"""Online-head fixtures: Gaussian-mixture embeddings with an adult and a shifted infant domain, a fitted head.

online_domains: dict adult/infant -> DomainData (train/cal/test embeddings and labels), seeded, 64-d.
online_base_head: an OnlineHead fitted on adult train and calibrated on adult cal (session-scoped: copy it).
online_head: a fresh deep copy of online_base_head for one test.
"""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def online_domains():
    """Seeded 7-class Gaussian mixtures: adult and a shifted, noisier infant domain (trainer.online_eval)."""
    from infantino.trainer.online_eval import gaussian_domains

    return gaussian_domains(n_train=700, n_cal=400, n_test=1000, seed=3)


@pytest.fixture(scope="session")
def online_base_head(online_domains):
    """OnlineHead fitted (20 epochs) on adult train and calibrated on adult cal; do not mutate (use online_head)."""
    from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig

    a = online_domains["adult"]
    head = OnlineHead(OnlineHeadConfig(seed=0), extractor_id="e" * 64)
    head.fit(a.X_train, a.y_train, epochs=20)
    head.calibrate(a.X_cal, a.y_cal)
    return head


@pytest.fixture
def online_head(online_base_head):
    """A private copy of the fitted, calibrated head."""
    return copy.deepcopy(online_base_head)


def write_legacy_state(head, path):
    """Write `head` as the legacy pickle state (format_version 1, what OnlineHead.save wrote before the npz
    format): {"format", "format_version", "state": head.__dict__ without the cache, config as a dict}."""
    import pickle
    from dataclasses import asdict
    from pathlib import Path

    state = {k: v for k, v in head.__dict__.items() if k != "_head_cache"}
    state["config"] = asdict(head.config)
    blob = {"format": "infantino-online-head", "format_version": 1, "state": state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
    return path


@pytest.fixture
def legacy_state_writer():
    """write_legacy_state(head, path): a legacy head_state.pkl as the pickle format wrote it."""
    return write_legacy_state

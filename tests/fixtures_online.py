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

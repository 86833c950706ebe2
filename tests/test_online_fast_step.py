"""The online head's Adam step without partial_fit's input checks (trainer.mlp_step): bit-identical results, a
fallback to partial_fit when it does not apply, and the fused recalibration scores."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from infantino.runtime.contract.classes import CLASSES
from infantino.trainer import mlp_step
from infantino.trainer.conformal import nonconformity
from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig


def _stream(head: OnlineHead, inf) -> None:
    """Every kind of update: hard, annotators', soft labels, calibration routes, learn_many with > 200 rows/step."""
    rng = np.random.default_rng(5)
    for i in range(40):
        x, y = inf.X_train[i], int(inf.y_train[i])
        if i % 7 == 0:
            head.learn_one(x, y, route="calibration")
        elif i % 5 == 0:
            head.learn_one(x, labels=[CLASSES[y], CLASSES[y], CLASSES[(y + 1) % 7]])
        elif i % 3 == 0:
            head.learn_one(x, soft_label=rng.dirichlet(np.ones(7)).tolist(), weight=0.5)
        else:
            head.learn_one(x, CLASSES[y])
    soft = [rng.dirichlet(np.ones(7)) for _ in range(70)]  # 7 rows each: steps of more than 200 rows
    head.learn_many(inf.X_train[40:110], soft)
    head.learn_many(inf.X_train[110:160], inf.y_train[110:160].tolist())


def test_fast_step_gives_the_same_head_bit_for_bit(online_head, online_domains, monkeypatch):
    """Two copies of one head stream the same updates, one through partial_fit, one through the fast step: their
    whole state files (weights, Adam moments, counters, replay, calibration, RNGs, qhat) are byte-identical."""
    inf = online_domains["infant"]
    a, b = online_head, copy.deepcopy(online_head)
    a.set_teacher_anchors(inf.X_cal[:20], np.full((20, 7), 1 / 7))
    b.set_teacher_anchors(inf.X_cal[:20], np.full((20, 7), 1 / 7))
    calls = []
    real = mlp_step.unchecked_step
    monkeypatch.setattr(mlp_step, "unchecked_step", lambda *args: (calls.append(len(args[1])), real(*args)))
    monkeypatch.setattr(mlp_step, "_self_check", False)  # a: partial_fit only
    _stream(a, inf)
    assert calls == []
    monkeypatch.setattr(mlp_step, "_self_check", None)   # b: the fast step (after its self-check)
    _stream(b, inf)
    assert mlp_step._self_check is True
    assert len(calls) > 30 and max(calls) > 200          # it ran, also for steps of more than 200 rows
    assert mlp_step.same_state(a.mlp, b.mlp)
    assert a.to_bytes() == b.to_bytes() and a.qhat == b.qhat and a.version == b.version


def test_a_failed_self_check_means_partial_fit(online_head, online_domains, monkeypatch, caplog):
    """If a scikit-learn version's internals behave otherwise, the head warns once and uses partial_fit."""
    inf = online_domains["infant"]
    monkeypatch.setattr(mlp_step, "_self_check", None)
    monkeypatch.setattr(mlp_step, "_compare_on_small_network", lambda: False)
    monkeypatch.setattr(mlp_step, "unchecked_step", lambda *a: pytest.fail("the fast step ran"))
    v0 = online_head.version
    with caplog.at_level(logging.WARNING, logger="infantino.trainer.mlp_step"):
        for i in range(3):
            assert online_head.learn_one(inf.X_train[i], int(inf.y_train[i]), route="train") == "trained"
    assert online_head.version == v0 + 3
    assert sum("fast MLP step disabled" in r.message for r in caplog.records) == 1


def test_fast_step_declines_what_partial_fit_would_treat_otherwise(online_head):
    from sklearn.neural_network import MLPClassifier

    mlp = online_head.mlp
    X = online_head.replay.X[:10].copy()
    y = online_head.replay.cls[:10].copy()
    w = np.ones(10, np.float32)
    assert mlp_step.applies(mlp, X, y, w) and mlp_step.applies(mlp, X, y, None)
    assert not mlp_step.applies(MLPClassifier(), X, y, w)               # unfitted: partial_fit initialises
    bad_x = X.copy()
    bad_x[0, 0] = np.nan
    declined = [(bad_x, y, w), (X.astype(np.float64), y, w), (np.asfortranarray(X), y, w),
                (X, np.where(y == y[0], 7, y), w), (X, y.astype(np.float32), w), (X, y, w.astype(np.float64)),
                (X[:, :10].copy(), y, w), (np.repeat(X, 21, axis=0), np.repeat(y, 21), None)]
    for args in declined:
        assert not mlp_step.applies(mlp, *args)
    shuffled = copy.deepcopy(mlp)
    shuffled.shuffle = True
    assert not mlp_step.applies(shuffled, X, y, w)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_recalibration_scores_are_the_probabilities_scores(online_domains, activation):
    """The fused float32 scoring of recalibrate() equals 1 - p(true class) of the head's forward pass."""
    a = online_domains["adult"]
    head = OnlineHead(OnlineHeadConfig(activation=activation, hidden=(16, 8)))
    head.fit(a.X_train[:300], a.y_train[:300], epochs=2)
    head.calibrate(a.X_cal[:300], a.y_cal[:300])
    Xc, yc = head.calib.data()
    assert np.array_equal(head._true_class_scores(Xc, yc), nonconformity(head._mlp_proba(Xc), yc))
    assert np.abs(head._true_class_scores(Xc, yc) - nonconformity(head.to_head().forward(Xc), yc)).max() < 1e-5

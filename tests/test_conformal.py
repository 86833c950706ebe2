"""Split-conformal prediction sets: threshold math, coverage on held-out data, recalibration after updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infantino.trainer.conformal import (CalibrationBuffer, conformal_quantile, evaluate_sets, min_calibration_size,
                                         nonconformity, prediction_sets, weighted_conformal_quantile)


def test_quantile_rank_and_small_samples():
    s = np.arange(1, 20) / 20.0  # 19 scores 0.05 .. 0.95
    # rank ceil((19 + 1) * 0.9) = 18 -> the 18th smallest score
    assert conformal_quantile(s, 0.9) == pytest.approx(0.9)
    assert conformal_quantile(s[:5], 0.9) == 1.0  # too few scores: every class (still valid)
    assert conformal_quantile([], 0.9) == 1.0
    assert min_calibration_size(0.9) == 9 and conformal_quantile(s[:9], 0.9) < 1.0
    with pytest.raises(ValueError, match="coverage"):
        conformal_quantile(s, 1.0)
    rng = np.random.default_rng(0)
    for n in (9, 10, 57, 500):
        x = rng.random(n)
        assert weighted_conformal_quantile(x, np.ones(n), 0.9) == conformal_quantile(x, 0.9)
    # decayed weights: recent (here: large) scores dominate the threshold
    x = np.r_[np.full(200, 0.1), np.full(50, 0.8)]
    ages = np.r_[np.full(200, 250), np.arange(50)[::-1]]
    assert conformal_quantile(x, 0.9) == pytest.approx(0.8)
    assert weighted_conformal_quantile(x, 0.99 ** ages, 0.9) == pytest.approx(0.8)
    assert weighted_conformal_quantile(x, 0.99 ** ages, 0.5) == pytest.approx(0.8)
    assert conformal_quantile(x, 0.5) == pytest.approx(0.1)


def test_sets_follow_the_device_rule(online_head, online_domains):
    X = online_domains["adult"].X_test[:300]
    probs = online_head.predict_proba(X)
    device_sets = [p.prediction_set for p in online_head.to_head().predict(X)]
    classes = online_head.classes
    assert [[classes[k] for k in s] for s in prediction_sets(probs, online_head.qhat)] == device_sets
    assert all(len(s) >= 1 for s in device_sets)
    assert prediction_sets(probs[:3], None) == [[int(np.argmax(p))] for p in probs[:3]]


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_holds_on_a_calibration_test_split(online_base_head, online_domains, coverage):
    import copy

    head = copy.deepcopy(online_base_head)
    head.reconfigure(coverage=coverage)  # recalibrates on the adult calibration split held in the buffer
    a = online_domains["adult"]
    r = evaluate_sets(head.predict_proba(a.X_test), a.y_test, head.qhat)
    # finite-sample guarantee: coverage >= level; with n_cal=400, n_test=1000 the excess is small
    sd = math.sqrt(coverage * (1 - coverage) / len(a.y_test))
    assert coverage - 3 * sd - 0.01 <= r["coverage"] <= coverage + 0.04, r
    assert r["mean_set_size"] >= 1.0
    assert head.to_head().coverage == coverage


def test_each_version_carries_its_own_threshold(online_head, online_domains):
    inf = online_domains["infant"]
    seen = set()
    for i in range(40):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]))
        h = online_head.to_head()
        Xc, yc = online_head.calib.data()
        w = online_head.config.calib_decay ** online_head.calib.ages()
        expected = weighted_conformal_quantile(nonconformity(h.forward(Xc), yc), w, 0.9)
        assert h.conformal_qhat == pytest.approx(expected, abs=1e-12)  # computed with this version's weights
        seen.add(h.conformal_qhat)
    assert len(seen) > 1


def test_recalibration_tracks_the_shift(online_domains):
    """Adult-calibrated sets under-cover infants; after an infant stream (10% held out) coverage is back near 90%."""
    from infantino.trainer.online_eval import coverage_after_stream
    from infantino.trainer.online_head import OnlineHeadConfig

    r = coverage_after_stream(online_domains, OnlineHeadConfig(seed=0), n_stream=1200, epochs=20)
    before, after = r["before"]["infant"]["coverage"], r["after"]["infant"]["coverage"]
    assert r["routes"]["calibration"] > 60
    assert abs(after - 0.9) < abs(before - 0.9)
    assert abs(after - 0.9) <= 0.03, r  # the goal: within ±3 points


def test_calibration_buffer_fifo_and_ages():
    b = CalibrationBuffer(5, 2)
    b.add_many(np.zeros((3, 2)), np.array([0, 1, 2]))  # one batch: one age
    assert b.ages().tolist() == [0, 0, 0]
    for k in (3, 4, 5, 6):
        b.add(np.full(2, k), k)
    X, y = b.data()
    assert len(b) == 5 and sorted(y.tolist()) == [2, 3, 4, 5, 6]  # oldest dropped
    ages = dict(zip(y.tolist(), b.ages().tolist()))
    assert ages == {6: 0, 5: 1, 4: 2, 3: 3, 2: 4}
    with pytest.raises(ValueError):
        CalibrationBuffer(0, 2)

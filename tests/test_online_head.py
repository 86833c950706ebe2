"""OnlineHead: learning from single samples, replay vs forgetting, versions, serialisation, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.head import Head
from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig


def _state(head: OnlineHead):
    """Everything a rejected sample must leave untouched."""
    return (head.version, head.to_head().sha256, head.qhat, len(head.replay), head.replay.n_seen, len(head.calib),
            head.counters.trained_samples, head.rng.bit_generator.state["state"]["state"])


def test_learning_from_single_samples_moves_predictions(online_head, online_domains):
    inf = online_domains["infant"]
    p_true = online_head.predict_proba(inf.X_train[:200])[np.arange(200), inf.y_train[:200]]
    i0 = int(np.argsort(p_true)[100])  # a sample the head is unsure about (median true-class probability)
    x, y = inf.X_train[i0], int(inf.y_train[i0])
    p0 = online_head.predict_proba(x)[0]
    v0 = online_head.version
    assert online_head.learn_one(x, CLASSES[y], route="train") == "trained"
    p1 = online_head.predict_proba(x)[0]
    assert online_head.version == v0 + 1
    assert np.abs(p1 - p0).max() > 1e-3  # one sample changes the head's output
    for _ in range(5):
        online_head.learn_one(x, y, route="train")
    assert online_head.predict_proba(x)[0, y] > p0[y] + 0.05  # and pulls it toward the label
    # across different samples: single updates raise the true-class probability on average
    gains = []
    for i in range(200, 230):
        xi, yi = inf.X_train[i], int(inf.y_train[i])
        before = online_head.predict_proba(xi)[0, yi]
        online_head.learn_one(xi, yi, route="train")
        gains.append(online_head.predict_proba(xi)[0, yi] - before)
    assert np.mean(gains) > 0 and np.mean(np.array(gains) > 0) > 0.6


def test_any_class_can_arrive_first():
    head = OnlineHead(OnlineHeadConfig(hidden=(16,)), extractor_id="x")
    assert not head.is_fitted
    rng = np.random.default_rng(0)
    assert head.learn_one(rng.normal(size=64), "disgust") == "trained"  # unfitted heads never hold samples out
    assert head.is_fitted and head.version == 1
    assert list(head.mlp.classes_) == list(range(7))
    p = head.predict_proba(rng.normal(size=(3, 64)))
    assert p.shape == (3, 7) and np.allclose(p.sum(1), 1)
    assert head.to_head().classes == CLASSES


def test_replay_reduces_forgetting_on_uneven_stream(online_domains):
    """Adult-trained head, infant stream of happy/sad/neutral only: naive partial_fit forgets adult, replay not."""
    from infantino.trainer.online_eval import forgetting

    r = forgetting(online_domains, OnlineHeadConfig(seed=0), n_stream=300, epochs=20, curve_every=300,
                   methods={"naive": {"replay_mix": 0, "anchor_strength": 0.0},
                            "replay": {"anchor_strength": 0.0}})
    naive, replay = r["methods"]["naive"], r["methods"]["replay"]
    assert naive["before"]["adult"] == replay["before"]["adult"] > 0.7
    assert naive["adult_drop_points"] > 10  # real forgetting happens without replay...
    assert replay["after"]["adult"] > naive["after"]["adult"] + 0.1  # ...and replay prevents most of it
    assert replay["adult_drop_points"] < naive["adult_drop_points"] / 2
    assert replay["after"]["infant_streamed"] > replay["before"]["infant_streamed"]  # while it learns infants


def test_numpy_forward_matches_sklearn(online_head, online_domains):
    inf = online_domains["infant"]
    for i in range(5):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]), route="train")
    X = inf.X_test[:200]
    head = online_head.to_head()
    ours = head.forward(X)
    ref = online_head.mlp.predict_proba(X.astype(np.float64))
    assert np.abs(ours - ref).max() < 1e-6
    assert np.abs(ours - online_head.mlp.predict_proba(X)).max() < 1e-6  # sklearn's float32 path too
    # the MLP trains in float32: the Head's float32 weights are the MLP's own, bit for bit
    assert all(np.array_equal(w, m) for w, m in zip(head.weights[0::2], online_head.mlp.coefs_))


def test_head_versions_extractor_and_file_roundtrip(online_head, online_domains):
    h1 = online_head.to_head()
    assert h1.extractor_id == "e" * 64 and h1.version == online_head.version
    assert h1.conformal_qhat == online_head.qhat and h1.coverage == 0.9
    back = Head.from_bytes(h1.to_bytes())
    assert back.sha256 == h1.sha256 and back.version == h1.version and back.conformal_qhat == h1.conformal_qhat
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, h1.weights))
    versions = [h1.version]
    inf = online_domains["infant"]
    for i in range(6):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]))
        versions.append(online_head.to_head().version)
    assert all(b > a for a, b in zip(versions, versions[1:]))  # monotonic, one per update


def test_deltas_between_versions_apply_on_device(online_head, online_domains, keypair):
    from infantino.runtime.contract.head_update import apply_update, encode_delta, encode_full

    _, _, priv, pub = keypair
    base = online_head.to_head()
    inf = online_domains["infant"]
    for i in range(3):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]), route="train")
    new = online_head.to_head()
    device = apply_update(None, encode_full(base, priv, fleet="nursery"), pub, base.extractor_id)
    for dtype, tol in (("float32", 1e-6), ("float16", 1e-2)):
        blob, result = encode_delta(base, new, priv, dtype=dtype, fleet="nursery")
        applied = apply_update(device, blob, pub, base.extractor_id)
        assert applied.sha256 == result.sha256 and applied.version == new.version
        assert applied.conformal_qhat == new.conformal_qhat
        X = inf.X_test[:100]
        assert np.abs(applied.forward(X) - online_head.predict_proba(X)).max() < tol


def test_save_load_roundtrip_continues_identically(online_head, online_domains, tmp_path):
    inf = online_domains["infant"]
    for i in range(10):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]))
    state, head_file = online_head.save_dir(tmp_path)
    loaded = OnlineHead.load(tmp_path)
    assert loaded.version == online_head.version and loaded.qhat == online_head.qhat
    assert loaded.to_head().sha256 == online_head.to_head().sha256
    assert Head.from_bytes(head_file.read_bytes()).sha256 == online_head.to_head().sha256
    assert np.array_equal(loaded.replay.X, online_head.replay.X) and len(loaded.calib) == len(online_head.calib)
    for i in range(10, 25):  # same RNG, optimizer and buffers: the two heads stay identical
        for h in (online_head, loaded):
            h.learn_one(inf.X_train[i], int(inf.y_train[i]))
    assert loaded.to_head().sha256 == online_head.to_head().sha256


def test_load_refuses_other_files(tmp_path):
    from infantino.runtime.contract.errors import InfantinoError

    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InfantinoError, match="not an online head state"):
        OnlineHead.load(tmp_path / "x.pkl")
    with pytest.raises(FileNotFoundError):
        OnlineHead.load(tmp_path / "missing.pkl")


@pytest.mark.parametrize("kwargs, match", [
    ({"embedding": np.zeros(63), "label": "happy"}, "64 values"),
    ({"embedding": np.full(64, np.nan), "label": "happy"}, "NaN"),
    ({"embedding": np.r_[np.zeros(63), np.inf], "label": "happy"}, "NaN or Inf"),
    ({"embedding": np.zeros((2, 64)), "label": "happy"}, "one embedding"),
    ({"embedding": "abc", "label": "happy"}, "numeric|64 values"),
    ({"embedding": np.zeros(64), "label": "joy"}, "unknown label 'joy'; valid labels: angry"),
    ({"embedding": np.zeros(64), "label": 7}, "out of range"),
    ({"embedding": np.zeros(64)}, "exactly one of"),
    ({"embedding": np.zeros(64), "label": "sad", "labels": ["sad"]}, "exactly one of"),
    ({"embedding": np.zeros(64), "labels": []}, "non-empty"),
    ({"embedding": np.zeros(64), "labels": ["sad", "joy"]}, "unknown label 'joy'"),
    ({"embedding": np.zeros(64), "soft_label": {"sad": -1.0}}, "non-negative"),
    ({"embedding": np.zeros(64), "soft_label": [0.5, 0.5]}, "7 values"),
    ({"embedding": np.zeros(64), "soft_label": {"sad": 0.0}}, "sums to zero"),
    ({"embedding": np.zeros(64), "label": "sad", "weight": 0}, "weight"),
    ({"embedding": np.zeros(64), "label": "sad", "weight": float("nan")}, "weight"),
    ({"embedding": np.zeros(64), "label": "sad", "route": "elsewhere"}, "unknown route"),
])
def test_bad_inputs_raise_clear_errors_and_leave_the_head_unchanged(online_head, kwargs, match):
    before = _state(online_head)
    with pytest.raises(ValueError, match=match):
        online_head.learn_one(**kwargs)
    assert _state(online_head) == before


def test_bad_batch_is_refused_as_a_whole(online_head, online_domains):
    inf = online_domains["infant"]
    before = _state(online_head)
    y = [CLASSES[int(v)] for v in inf.y_train[:10]]
    y[7] = "joy"
    with pytest.raises(ValueError, match="joy"):
        online_head.learn_many(inf.X_train[:10], y)
    X = inf.X_train[:10].copy()
    X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        online_head.learn_many(X, inf.y_train[:10])
    with pytest.raises(ValueError, match="rows"):
        online_head.learn_many(inf.X_train[:10], inf.y_train[:9])
    with pytest.raises(ValueError, match="64 values"):
        online_head.predict(np.zeros((2, 32)))
    assert _state(online_head) == before


def test_learn_many_one_version_and_routes(online_head, online_domains):
    inf = online_domains["infant"]
    v = online_head.version
    y = list(inf.y_train[:200])
    y[0] = ["happy", "sad"]                     # annotators tie: soft rule keeps it (0.5 / 0.5)
    y[1] = {"fear": 0.7, "surprise": 0.3}       # soft label
    counts = online_head.learn_many(inf.X_train[:200], y)
    assert online_head.version == v + 1
    assert counts["trained"] + counts["calibration"] == 200 and counts["dropped"] == 0
    assert 5 <= counts["calibration"] <= 40     # ~10% held out for conformal calibration by default


def test_annotator_rules():
    from infantino.trainer.labels import combine_annotators, expand_targets, soft_target

    t = combine_annotators(["sad", "sad", "fear"], rule="soft")
    assert t[CLASSES.index("sad")] == pytest.approx(2 / 3) and t[CLASSES.index("fear")] == pytest.approx(1 / 3)
    assert combine_annotators(["sad", "sad", "fear"], rule="majority")[CLASSES.index("sad")] == 1.0
    assert combine_annotators(["sad", "fear"], rule="majority") is None  # tie: dropped
    assert soft_target({"happy": 2, "neutral": 2})[CLASSES.index("happy")] == pytest.approx(0.5)
    X, k, w = expand_targets(np.ones((1, 64), np.float32), t[None, :], np.array([2.0], np.float32))
    assert sorted(k.tolist()) == [CLASSES.index("fear"), CLASSES.index("sad")] and w.sum() == pytest.approx(2.0)


def test_majority_tie_is_dropped_without_change(online_domains):
    head = OnlineHead(OnlineHeadConfig(hidden=(16,), ambiguity="majority"))
    x = online_domains["adult"].X_train[0]
    head.learn_one(x, "happy")
    before = _state(head)
    assert head.learn_one(x, labels=["sad", "fear"]) == "dropped"
    assert _state(head) == before and head.counters.dropped_samples == 1
    assert head.learn_one(x, labels=["sad", "fear", "sad"], route="train") == "trained"


def test_soft_label_pulls_toward_both_classes(online_head, online_domains):
    x = online_domains["infant"].X_train[3]
    i, j = CLASSES.index("disgust"), CLASSES.index("surprise")
    p0 = online_head.predict_proba(x)[0]
    for _ in range(8):
        online_head.learn_one(x, soft_label={"disgust": 0.5, "surprise": 0.5}, route="train")
    p1 = online_head.predict_proba(x)[0]
    assert p1[i] > p0[i] and p1[j] > p0[j]


def test_class_balanced_replay_keeps_rare_classes():
    from infantino.trainer.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    eye = np.eye(7, dtype=np.float32)
    buffers = {p: ReplayBuffer(70, 64, 7, p, seed=1) for p in ("class_balanced", "reservoir")}
    labels = np.r_[np.arange(70) % 7, np.full(2000, 3)]  # balanced start, then only "happy"
    for k in labels:
        for b in buffers.values():
            b.add(rng.normal(size=64), eye[k])
    cb, rs = buffers["class_balanced"].class_counts(), buffers["reservoir"].class_counts()
    assert len(buffers["class_balanced"]) == len(buffers["reservoir"]) == 70  # bounded
    assert cb.min() >= 5 and cb[3] <= 20          # every class kept its share
    assert rs[3] > 55                             # a uniform reservoir follows the stream's mix
    s = buffers["class_balanced"].sample(32)
    assert s.X.shape == (32, 64) and s.T.shape == (32, 7)


def test_config_and_reconfigure_validation(online_head):
    with pytest.raises(ValueError, match="replay_policy"):
        OnlineHeadConfig(replay_policy="fifo")
    with pytest.raises(ValueError, match="coverage"):
        OnlineHeadConfig(coverage=1.5)
    with pytest.raises(ValueError, match="unknown online head settings: bogus"):
        online_head.reconfigure(bogus=1)
    with pytest.raises(ValueError, match="cannot change hidden"):
        online_head.reconfigure(hidden=(5,))
    q = online_head.qhat
    online_head.reconfigure(coverage=0.5, replay_policy="reservoir")
    assert online_head.replay.policy == "reservoir" and online_head.qhat < q
    assert online_head.to_head().coverage == 0.5


# ---- harder skewed-shift stream, distillation on replay, teacher anchors ---------------------------------------------
def test_skewed_shift_default_keeps_the_old_domain_where_naive_forgets():
    """Weakly separated classes (start ~0.6), a conflicting infant domain streamed 3 classes first, then all."""
    from infantino.trainer.online_eval import SKEWED_METHODS, SkewedShift, forgetting_skewed

    sc = SkewedShift(n_train=700, n_cal=300, n_test=600, n_first=300, n_rest=200)
    r = forgetting_skewed(sc, methods={"naive": SKEWED_METHODS["naive"], "default": {}}, seeds=(0,), epochs=20,
                          curve_every=250)
    naive, default = r["summary"]["naive"], r["summary"]["default"]
    assert 0.5 < naive["adult_before"]["mean"] < 0.7 and naive["infant_before"]["mean"] < 0.4
    assert naive["adult_drop_points"]["mean"] > 8           # naive partial_fit forgets the adult domain...
    assert default["adult_drop_points"]["mean"] < min(3.0, naive["adult_drop_points"]["mean"] / 3)  # ...the default not
    assert default["infant_gain_points"]["mean"] > 4         # while it still learns the new domain
    run = r["runs"][0]["methods"]["default"]
    assert [c["step"] for c in run["curve"]] == [250, 500]
    assert 0 < run["after"]["infant_coverage"] <= 1 and run["after"]["infant_set_size"] >= 1


def test_phased_stream_holds_only_the_first_classes_first():
    from infantino.trainer.online_eval import phased_stream_indices

    y = np.arange(700) % 7
    order = phased_stream_indices(y, [(("happy", "sad", "neutral"), 50), (None, 70)], seed=0)
    first = {CLASSES[k] for k in y[order[:50]]}
    assert len(order) == 120 and first == {"happy", "sad", "neutral"} and len(set(y[order[50:]])) == 7


def test_replay_entries_store_the_heads_probabilities(online_head, online_domains):
    inf = online_domains["infant"]
    n0 = len(online_head.replay)
    assert np.allclose(online_head.replay.P[:n0].sum(1), 1) and not np.array_equal(online_head.replay.P[:n0],
                                                                                  online_head.replay.T[:n0])
    rb = online_head.replay
    rb.size = 100  # room for the next samples, so they are stored
    online_head.learn_one(inf.X_train[0], int(inf.y_train[0]), route="train")
    p = online_head.predict_proba(inf.X_train[0])[0]
    assert np.allclose(rb.P[100], p, atol=1e-5)           # what the head said right after learning it
    online_head.reconfigure(distill_weight=0.0)
    online_head.learn_one(inf.X_train[1], int(inf.y_train[1]), route="train")
    assert np.array_equal(rb.P[101], rb.T[101])            # without distillation: the target itself


def test_threshold_equals_the_float64_computation(online_head, online_domains):
    """recalibrate() scores in float32 and redoes the scores near the threshold in float64: same qhat."""
    from infantino.trainer.conformal import nonconformity, weighted_conformal_quantile

    inf = online_domains["infant"]
    for i in range(60):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]), route="calibration" if i % 3 == 0 else "train")
        Xc, yc = online_head.calib.data()
        w = online_head.config.calib_decay ** online_head.calib.ages()
        ref = weighted_conformal_quantile(nonconformity(online_head.to_head().forward(Xc), yc), w, 0.9)
        assert abs(online_head.qhat - ref) < 1e-12


def test_teacher_anchors_keep_agreement_with_the_teacher(online_base_head, online_domains):
    """Held-out 'real' faces (a domain the skewed stream never shows): the head keeps agreeing with the teacher
    (the initial head's probabilities on that domain) more when it holds anchors of that domain."""
    from infantino.trainer.online_eval import teacher_anchors_effect

    r = teacher_anchors_effect(online_domains, base=online_base_head, weights=(0.0, 3.0))
    without, with_ = r["weights"][0.0], r["weights"][3.0]
    assert with_["agreement"] > without["agreement"] + 0.015, r
    assert with_["infant"] > without["infant"] - 0.02, r      # at no real cost on the new domain


def test_teacher_anchors_rotate_persist_and_join_fit(online_head, online_domains, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 64)).astype(np.float32)
    P = rng.dirichlet(np.ones(7), size=10)
    online_head.set_teacher_anchors(X, P * 3, weight=2.0)   # rows are normalised
    t = online_head.teacher
    assert len(t) == 10 and t.weight == 2.0 and np.allclose(t.P.sum(1), 1)
    assert sorted(np.concatenate([t.take(4), t.take(4), t.take(2)]).tolist()) == list(range(10))  # one full pass
    inf = online_domains["infant"]
    n_seen = online_head.replay.n_seen
    for i in range(5):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]), route="train")
    assert online_head.replay.n_seen == n_seen + 5            # anchors never enter the replay buffer
    online_head.save_dir(tmp_path)
    loaded = OnlineHead.load(tmp_path)
    assert np.array_equal(loaded.teacher.X, X) and loaded.teacher.cursor == t.cursor
    for i in range(5, 15):  # same rotation, RNG and buffers: identical heads
        for h in (online_head, loaded):
            h.learn_one(inf.X_train[i], int(inf.y_train[i]))
    assert loaded.to_head().sha256 == online_head.to_head().sha256
    # fit mixes them in too: a head fitted with anchors that all say "fear" predicts fear more on them
    a = online_domains["adult"]
    fear = np.zeros((10, 7))
    fear[:, CLASSES.index("fear")] = 1
    heads = []
    for anchors in (False, True):
        h = OnlineHead(OnlineHeadConfig(seed=0))
        if anchors:
            h.set_teacher_anchors(X, fear, weight=5.0)
        heads.append(h.fit(a.X_train[:300], a.y_train[:300], epochs=5))
    p_fear = [h.predict_proba(X)[:, CLASSES.index("fear")].mean() for h in heads]
    assert p_fear[1] > p_fear[0] + 0.2
    online_head.set_teacher_anchors(np.zeros((0, 64)), np.zeros((0, 7)))  # an empty set removes them
    assert online_head.teacher is None


@pytest.mark.parametrize("X, P, weight, match", [
    (np.zeros((3, 63)), np.full((3, 7), 1 / 7), 1.0, "64 values"),
    (np.zeros((3, 64)), np.full((3, 6), 1 / 6), 1.0, "shape"),
    (np.zeros((3, 64)), np.full((2, 7), 1 / 7), 1.0, "shape"),
    (np.zeros((3, 64)), np.r_[np.full((2, 7), 1 / 7), -np.ones((1, 7))], 1.0, "non-negative"),
    (np.zeros((3, 64)), np.zeros((3, 7)), 1.0, "not all zero"),
    (np.zeros((3, 64)), np.full((3, 7), np.nan), 1.0, "finite"),
    (np.zeros((3, 64)), np.full((3, 7), 1 / 7), 0.0, "weight"),
])
def test_bad_teacher_anchors_are_refused(online_head, X, P, weight, match):
    before = _state(online_head)
    with pytest.raises(ValueError, match=match):
        online_head.set_teacher_anchors(X, P, weight=weight)
    assert online_head.teacher is None and _state(online_head) == before


def test_old_state_files_without_teacher_or_stored_probabilities_load(online_head, online_domains, tmp_path,
                                                                      legacy_state_writer):
    """A legacy head_state.pkl written before teacher anchors and stored probabilities existed still migrates
    (when trusted) and learns."""
    import pickle

    path = legacy_state_writer(online_head, tmp_path / "head_state.pkl")
    blob = pickle.loads(path.read_bytes())
    state = blob["state"]
    del state["teacher"]
    for k in ("distill_weight", "distill_top", "teacher_mix"):
        del state["config"][k]
    replay_state = state["replay"].__dict__
    del replay_state["P"]
    path.write_bytes(pickle.dumps(blob))
    loaded = OnlineHead.load(path, trust_legacy_pickle=True)
    assert (tmp_path / "head_state.npz").is_file()
    assert loaded.teacher is None and np.array_equal(loaded.replay.P, loaded.replay.T)
    assert loaded.to_head().sha256 == online_head.to_head().sha256
    inf = online_domains["infant"]
    assert loaded.learn_one(inf.X_train[0], int(inf.y_train[0]), route="train") == "trained"


def test_new_settings_are_validated():
    for kwargs, match in (({"distill_weight": 1.5}, "distill_weight"), ({"distill_top": 0}, "distill_top"),
                          ({"teacher_mix": -1}, "teacher_mix")):
        with pytest.raises(ValueError, match=match):
            OnlineHeadConfig(**kwargs)


def test_replay_improve_keeps_the_best_output_on_each_entry():
    from infantino.trainer.replay import ReplayBuffer

    eye = np.eye(7, dtype=np.float32)
    b = ReplayBuffer(4, 64, 7, seed=0)
    stored = np.full((4, 7), 0.1, np.float32)
    stored[np.arange(4), np.arange(4)] = 0.4
    b.add_many(np.zeros((4, 64), np.float32), eye[:4], P=stored)
    s = b.sample(4)
    new = np.tile(np.float32(1 / 7), (4, 7))
    new[s.idx == 0, 0] = 0.9                     # entry 0: the head is now surer of its class -> replaced
    b.improve(s.idx, new)
    assert b.P[0, 0] == pytest.approx(0.9) and np.allclose(b.P[1:], stored[1:])  # the others got worse: kept

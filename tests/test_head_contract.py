"""The head file and signed head-update contract: exact round trips, deltas, and every rejection reason."""

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.errors import HeadError, UpdateRejected
from infantino.runtime.contract.head import Head

EXT = "e" * 64


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 64)).astype(np.float32)
    y = rng.integers(0, 7, 300)
    m = MLPClassifier(hidden_layer_sizes=(100,), random_state=0)
    m.partial_fit(X, y, classes=np.arange(7))
    return m, X, y


def test_numpy_forward_matches_sklearn(mlp):
    m, X, _ = mlp
    head = Head.from_sklearn(m, version=1, extractor_id=EXT)
    assert np.abs(head.forward(X) - m.predict_proba(X)).max() < 1e-6


def test_head_file_round_trip_is_exact(mlp):
    m, X, _ = mlp
    head = Head.from_sklearn(m, version=3, extractor_id=EXT, conformal_qhat=0.8, coverage=0.9)
    back = Head.from_bytes(head.to_bytes())
    assert back.sha256 == head.sha256 and back.version == 3 and back.conformal_qhat == 0.8
    for a, b in zip(head.weights, back.weights):
        assert np.array_equal(a, b)


def test_corrupt_head_file_is_refused(mlp):
    m, _, _ = mlp
    blob = bytearray(Head.from_sklearn(m, version=1, extractor_id=EXT).to_bytes())
    blob[-5] ^= 0xFF
    with pytest.raises(HeadError, match="sha256"):
        Head.from_bytes(bytes(blob))
    with pytest.raises(HeadError, match="payload"):
        Head.from_bytes(bytes(blob[:-4]))


def test_prediction_set_holds_top_class_and_grows_with_qhat(mlp):
    m, X, _ = mlp
    narrow = Head.from_sklearn(m, version=1, extractor_id=EXT, conformal_qhat=0.01).predict(X[:20])
    wide = Head.from_sklearn(m, version=1, extractor_id=EXT, conformal_qhat=0.99).predict(X[:20])
    for n, w in zip(narrow, wide):
        assert n.label in n.prediction_set and set(n.prediction_set) <= set(w.prediction_set)
    assert sum(len(w.prediction_set) for w in wide) > sum(len(n.prediction_set) for n in narrow)


@pytest.fixture()
def heads(mlp):
    m, X, y = mlp
    import copy

    m = copy.deepcopy(m)
    base = Head.from_sklearn(m, version=1, extractor_id=EXT)
    m.partial_fit(X[:1], y[:1])
    new = Head.from_sklearn(m, version=2, extractor_id=EXT)
    return base, new


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_delta_applies_to_the_published_result(heads, keypair, dtype):
    base, new = heads
    _, _, sk, pk = keypair
    blob, published = hu.encode_delta(base, new, sk, dtype=dtype, fleet="nursery")
    got = hu.apply_update(base, blob, pk, EXT)
    assert got.version == 2 and got.sha256 == published.sha256
    assert np.abs(got.forward(np.ones((1, 64))) - new.forward(np.ones((1, 64)))).max() < 1e-4


def test_full_update_round_trip_with_compression(heads, keypair):
    _, new = heads
    _, _, sk, pk = keypair
    got = hu.apply_update(None, hu.encode_full(new, sk, compression="zlib", fleet="nursery"), pk, EXT)
    assert got.sha256 == new.sha256


def _reason(fn):
    with pytest.raises(UpdateRejected) as ei:
        fn()
    return ei.value.reason


def test_every_rejection_reason(heads, keypair, tmp_path):
    from infantino.runtime.contract import signing

    base, new = heads
    _, _, sk, pk = keypair
    signing.generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    other = signing.load_private_key(tmp_path / "other.key")
    delta, _ = hu.encode_delta(base, new, sk, fleet="nursery")
    assert _reason(lambda: hu.apply_update(base, delta, pk, "f" * 64)) == "wrong_extractor"
    assert _reason(lambda: hu.apply_update(base, hu.encode_delta(base, new, other, fleet="nursery")[0], pk, EXT)) == "bad_signature"
    assert _reason(lambda: hu.apply_update(new, hu.encode_full(new, sk, fleet="nursery"), pk, EXT)) == "stale_version"
    assert _reason(lambda: hu.apply_update(None, delta, pk, EXT)) == "wrong_base"
    assert _reason(lambda: hu.apply_update(base.replace(version=0), delta, pk, EXT)) == "wrong_base"
    assert _reason(lambda: hu.apply_update(base, delta[:-70], pk, EXT)) == "bad_signature"  # checked first
    assert _reason(lambda: hu.apply_update(base, b"garbage", pk, EXT)) == "corrupt"
    flipped = bytearray(delta)
    flipped[200] ^= 1
    assert _reason(lambda: hu.apply_update(base, bytes(flipped), pk, EXT)) in ("bad_signature", "corrupt")
    # A correctly signed update whose weights hold NaN, or whose hash lies, is still refused.
    nan_w = list(new.weights)
    nan_w[0] = nan_w[0].copy()
    nan_w[0][0, 0] = np.nan
    hdr = hu._header_common(new, "full", "float32", "none", 0, "nursery")
    payload = hu.binfmt.arrays_to_bytes(nan_w, "float32")
    hdr.update(payload_len=len(payload), base_version=None, result_sha256=new.sha256)
    assert _reason(lambda: hu.apply_update(base, hu._seal(hdr, payload, sk), pk, EXT)) == "invalid_weights"
    hdr2 = dict(hdr, result_sha256="0" * 64)
    payload2 = hu.binfmt.arrays_to_bytes(new.weights, "float32")
    assert _reason(lambda: hu.apply_update(base, hu._seal(hdr2, payload2, sk), pk, EXT)) == "hash_mismatch"
    hdr3 = dict(hdr, shapes=[[64, 50], [50], [50, 7], [7]])
    small = [np.zeros(s, np.float32) for s in hdr3["shapes"]]
    p3 = hu.binfmt.arrays_to_bytes(small, "float32")
    hdr3["payload_len"] = len(p3)
    hdr3["kind"], hdr3["base_version"] = "delta", 1
    assert _reason(lambda: hu.apply_update(base, hu._seal(hdr3, p3, sk), pk, EXT)) == "wrong_shapes"


def test_check_fits_is_the_one_fit_check():
    import numpy as np

    from infantino.runtime.contract.classes import CLASSES
    from infantino.runtime.contract.errors import HeadError
    from infantino.runtime.contract.head import Head

    rng = np.random.default_rng(0)
    w = [rng.normal(size=(64, 8)).astype(np.float32), np.zeros(8, np.float32),
         rng.normal(size=(8, 7)).astype(np.float32), np.zeros(7, np.float32)]
    h = Head(weights=w, classes=list(CLASSES), version=3, extractor_id="a" * 64)
    assert h.fit_problems("a" * 64, 64, CLASSES) == [] and h.check_fits("a" * 64, 64, CLASSES) is h
    assert h.fit_problems() == []  # unknown fields are skipped
    probs = h.fit_problems("b" * 64, 128, list(reversed(CLASSES)))
    assert len(probs) == 3 and "trained on extractor aaaaaaaaaaaa" in probs[0] and "64-d" in probs[1]
    import pytest

    with pytest.raises(HeadError, match="^device cam-1: head takes 64-d embeddings"):
        h.check_fits(embedding_dim=32, what="device cam-1")

"""The online head's state file (trainer.statefile, head_state.npz): exact round trips, hostile and corrupt files,
and the one-time migration of legacy pickle states (head_state.pkl)."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from infantino.runtime.contract.errors import InfantinoError
from infantino.trainer import online_head as online_head_module
from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig
from infantino.trainer.statefile import StateFileError, unpack


# ---- helpers ------------------------------------------------------------------------------------------
def _state(head: OnlineHead) -> tuple[dict, dict]:
    """Everything a head saves (document without the writer's versions, arrays)."""
    doc, arrays = head._to_state()
    doc.pop("written_by")
    return doc, arrays


def _assert_same_state(a: OnlineHead, b: OnlineHead) -> None:
    """Bit-identical saved state, the same attributes, and sklearn objects with the same fields and types."""
    (da, aa), (db, ab) = _state(a), _state(b)
    assert json.dumps(da, sort_keys=True, default=float) == json.dumps(db, sort_keys=True, default=float)
    assert aa.keys() == ab.keys()
    for k in aa:
        assert aa[k].dtype == ab[k].dtype and np.array_equal(aa[k], ab[k]), k
    assert set(vars(a)) == set(vars(b))
    if a.mlp is not None:
        skip = {"_random_state"}  # re-created from random_state by every sklearn fit call
        assert {k: type(v) for k, v in vars(a.mlp).items() if k not in skip} == \
               {k: type(v) for k, v in vars(b.mlp).items() if k not in skip}
        assert vars(a.mlp._label_binarizer).keys() == vars(b.mlp._label_binarizer).keys()
        assert a.mlp._label_binarizer.y_type_ == b.mlp._label_binarizer.y_type_
        if hasattr(a.mlp, "_optimizer"):
            assert set(vars(a.mlp._optimizer)) == set(vars(b.mlp._optimizer))


def _same_weights(a: OnlineHead, b: OnlineHead) -> bool:
    pa, pb = a.mlp.coefs_ + a.mlp.intercepts_, b.mlp.coefs_ + b.mlp.intercepts_
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(pa, pb))


def _continue(head: OnlineHead, inf) -> None:
    """The same further updates for every head: single samples (auto route: the RNG picks calibration
    samples), a batch, annotators' votes, and another fit (shuffled by the RNG)."""
    for i in range(40, 80):
        head.learn_one(inf.X_train[i], int(inf.y_train[i]))
    head.learn_many(inf.X_train[80:150], inf.y_train[80:150])
    head.learn_one(inf.X_train[150], labels=["sad", "sad", "fear"])
    head.fit(inf.X_train[:64], inf.y_train[:64], epochs=1)


def _write_raw(path: Path, doc_text: str | None, arrays: dict, compress: bool = False) -> Path:
    """A zip like the state file, written without any of pack()'s checks (for hostile files)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        if doc_text is not None:
            zf.writestr("state.json", doc_text)
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, a, allow_pickle=a.dtype.hasobject)
    return path


class _RunsCode:
    """Unpickling this runs `touch <marker>` (the classic pickle payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"format": "infantino-online-head", "format_version": 1, "state": _RunsCode(marker)},
                        protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture(scope="module")
def small_state(online_domains):
    """Bytes of a small fitted head's state with every part present: teacher anchors, anchor, optimizer."""
    a = online_domains["adult"]
    head = OnlineHead(OnlineHeadConfig(hidden=(16,), replay_size=60, calib_size=40, seed=4), extractor_id="s" * 64)
    head.set_teacher_anchors(a.X_cal[:12], np.full((12, 7), 1 / 7))
    head.fit(a.X_train[:200], a.y_train[:200], epochs=2)
    head.calibrate(a.X_cal[:40], a.y_cal[:40])
    head.learn_one(a.X_train[300], int(a.y_train[300]), route="train")
    return head.to_bytes()


# ---- round trips ----------------------------------------------------------------------------------------
def test_round_trip_then_updates_stay_bit_identical(online_head, online_domains, tmp_path):
    """save -> load -> the same updates: weights, optimizer moments, buffers, RNGs and predictions identical to
    the head that was never saved."""
    inf, adult = online_domains["infant"], online_domains["adult"]
    online_head.set_teacher_anchors(adult.X_cal[:30], online_head.predict_proba(adult.X_cal[:30]))
    for i in range(40):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]))
    path = online_head.save(tmp_path / "head_state.npz")
    loaded = OnlineHead.load(path)
    _assert_same_state(online_head, loaded)
    assert loaded.mlp._optimizer.t == online_head.mlp._optimizer.t > 0
    for h in (online_head, loaded):
        _continue(h, inf)
    assert _same_weights(online_head, loaded)
    _assert_same_state(online_head, loaded)
    X = inf.X_test[:300]
    assert np.array_equal(online_head.predict_proba(X), loaded.predict_proba(X))
    assert [p.prediction_set for p in online_head.predict(X)] == [p.prediction_set for p in loaded.predict(X)]
    assert loaded.to_head().sha256 == online_head.to_head().sha256 and loaded.qhat == online_head.qhat
    # the file is an ordinary npz: arrays and one JSON document, nothing that needs pickle
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(bytes(z["state.json"]))
        assert doc["format_version"] == 2 and z["mlp.coefs.0"].dtype == np.float32


def test_sgd_optimizer_state_round_trips(online_domains, tmp_path):
    """An MLP on sklearn's SGD solver (momentum velocities) continues identically too."""
    inf = online_domains["infant"]
    head = OnlineHead(OnlineHeadConfig(hidden=(16,), seed=2), extractor_id="x")
    head.learn_many(inf.X_train[:40], inf.y_train[:40])
    head.mlp.set_params(solver="sgd", momentum=0.8)
    del head.mlp._optimizer                     # the next partial_fit makes an SGDOptimizer
    head.learn_many(inf.X_train[40:80], inf.y_train[40:80])
    assert type(head.mlp._optimizer).__name__ == "SGDOptimizer"
    loaded = OnlineHead.load(head.save(tmp_path / "s.npz"))
    _assert_same_state(head, loaded)
    for h in (head, loaded):
        h.learn_many(inf.X_train[80:120], inf.y_train[80:120])
    assert _same_weights(head, loaded)


def test_unfitted_and_seeded_heads_round_trip(online_domains, tmp_path):
    """A head never trained (no MLP) and one seeded from given weights (MLP without optimizer state)."""
    from infantino.trainer.mini_xception import seed_online_head

    inf = online_domains["infant"]
    fresh = OnlineHead(OnlineHeadConfig(hidden=(8,)), extractor_id="x")
    loaded = OnlineHead.load(fresh.save(tmp_path / "fresh.npz"))
    assert loaded.mlp is None and not loaded.is_fitted
    _assert_same_state(fresh, loaded)
    rng = np.random.default_rng(0)
    seeded = OnlineHead(OnlineHeadConfig(hidden=(8,)), extractor_id="x")
    seed_online_head(seeded, [rng.normal(size=s).astype(np.float32) for s in ((64, 8), (8,), (8, 7), (7,))])
    assert not hasattr(seeded.mlp, "_optimizer") and seeded.anchor is not None
    loaded_seeded = OnlineHead.load(seeded.save(tmp_path / "seeded.npz"))
    _assert_same_state(seeded, loaded_seeded)
    for pair in ((fresh, loaded), (seeded, loaded_seeded)):
        for h in pair:
            h.learn_many(inf.X_train[:30], inf.y_train[:30])
        assert _same_weights(*pair)


# ---- files that must never run code -------------------------------------------------------------------------
def test_the_payload_is_real(tmp_path):
    """Control: plain pickle.loads does run the payload the next tests feed the loader."""
    marker = tmp_path / "control"
    pickle.loads(_payload(marker))
    assert marker.exists()


@pytest.mark.parametrize("name, trust, match", [
    ("head_state.npz", False, "pickle under the new format's name"),
    ("head_state.npz", True, "pickle under the new format's name"),
    ("head_state.pkl", False, "legacy online head state: a Python pickle"),
    ("head_state.pkl", True, "posix.system is not part of an online head state"),
])
@pytest.mark.parametrize("as_folder", [False, True])
def test_a_pickle_that_runs_code_is_never_run(tmp_path, name, trust, match, as_folder):
    """A hostile pickle under the new name, or as a legacy state with or without the trust flag: refused with a
    clear message, the payload never runs, nothing is migrated."""
    marker = tmp_path / "pwned"
    path = tmp_path / "state" / name
    path.parent.mkdir()
    path.write_bytes(_payload(marker))
    with pytest.raises(StateFileError, match=match) as e:
        OnlineHead.load(path.parent if as_folder else path, trust_legacy_pickle=trust)
    assert not marker.exists()
    assert str(path) in str(e.value)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]
    if name.endswith(".pkl") and not trust:
        assert "--migrate-legacy-state" in str(e.value) and "runs whatever code" in str(e.value)


def test_an_object_array_holding_a_pickle_is_refused(tmp_path, small_state):
    """An .npy member of dtype object is a pickle inside the zip: refused from its header, never unpickled."""
    marker = tmp_path / "pwned"
    doc, arrays = unpack(small_state)
    arrays["replay.X"] = np.array([_RunsCode(marker)], dtype=object)
    path = _write_raw(tmp_path / "head_state.npz", json.dumps(doc), arrays)
    with pytest.raises(StateFileError, match="dtype object is not allowed"):
        OnlineHead.load(path)
    assert not marker.exists()


# ---- corrupt, inconsistent or unknown files --------------------------------------------------------------------
def _set(path: str, value):
    """Mutation: set a document field by dotted path."""
    def f(doc, arrays):
        *parents, last = path.split(".")
        d = doc
        for p in parents:
            d = d[p]
        d[last] = value
    return f


def _array(name: str, fn):
    def f(doc, arrays):
        arrays[name] = fn(arrays[name])
    return f


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


BAD_FIELDS = [
    ("wrong shape", _array("mlp.coefs.0", lambda a: a[:-1]), "mlp.coefs.0'.*shape"),
    ("wrong dtype", _array("mlp.coefs.0", lambda a: a.astype(np.float64)), "dtype float64, expected float32"),
    ("NaN weights", _array("mlp.intercepts.0", _nan), "mlp.intercepts.0' contains NaN"),
    ("NaN replay", _array("replay.X", _nan), "replay.X' contains NaN"),
    ("Inf moments", _array("mlp.opt.vs.1", lambda a: a + np.inf), "NaN or Inf"),
    ("negative moments", _array("mlp.opt.vs.0", lambda a: a - 1), "mlp.opt.vs.0'.*outside"),
    ("label out of range", _array("replay.cls", lambda a: a + 7), "replay.cls'.*outside"),
    ("not a permutation", _array("teacher.order", lambda a: np.zeros_like(a)), "permutation"),
    ("missing array", lambda d, a: a.pop("replay.P"), "replay.P' is missing"),
    ("extra array", lambda d, a: a.update(extra=np.zeros(3)), "unexpected arrays in the file: extra"),
    ("newer version", _set("format_version", 3), "format_version 3.*newer infantino"),
    ("version as text", _set("format_version", "2"), "unsupported format_version '2'"),
    ("another format", _set("format", "something-else"), "not an infantino online head state"),
    ("bad config value", _set("head.config.coverage", 1.5), "coverage"),
    ("config type", _set("head.config.replay_size", "60"), "head.config.replay_size: must be an integer"),
    ("unknown setting", _set("head.config.turbo", True), "head.config.turbo: unknown setting"),
    ("duplicate classes", _set("head.classes", ["a", "a", "b", "c", "d", "e", "f"]), "distinct"),
    ("qhat", _set("head.qhat", 2.0), "head.qhat: 2.0 is outside"),
    ("rng", _set("head.rng", {"bit_generator": "MT19937"}), "head.rng: not a PCG64 generator state"),
    ("replay size", _set("replay.size", 61), "replay.size: 61 is outside"),
    ("ring position", _set("calib.size", 10), "calib.next: is 0, but a ring that is not full writes at its size"),
    ("hidden layers", _set("mlp.params.hidden_layer_sizes", [17]), "hidden layers"),
    ("solver", _set("mlp.params.solver", "lbfgs"), "solver"),
    ("sklearn's checks", _set("mlp.params.alpha", -1.0), "invalid MLPClassifier parameters"),
    ("beta", _set("mlp.optimizer.beta_1", 1.0), "beta_1: must be < 1"),
    ("optimizer kind", _set("mlp.optimizer.kind", "rmsprop"), "mlp.optimizer.kind"),
    ("counter", _set("head.counters.updates", -1), "head.counters.updates: -1 is outside"),
    ("mlp not an object", _set("mlp", [1, 2]), "mlp: must be a JSON object"),
]


@pytest.mark.parametrize("what, mutate, match", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_fields_are_clear_errors(tmp_path, small_state, what, mutate, match):
    doc, arrays = unpack(small_state)
    mutate(doc, arrays)
    path = _write_raw(tmp_path / "head_state.npz", json.dumps(doc), arrays)
    with pytest.raises(StateFileError, match=match) as e:
        OnlineHead.load(path)
    assert str(path) in str(e.value) and isinstance(e.value, InfantinoError)  # CLIs print it, exit 2


def _flip_inside(data: bytes) -> bytes:
    """One byte of the replay buffer's array data flipped (the zip's CRC no longer matches)."""
    i = data.index(b"replay.X.npy") + 400
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _huge_header(data: bytes) -> bytes:
    doc, arrays = unpack(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("state.json", json.dumps(doc))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        zf.writestr("replay.X.npy", header.getvalue() + b"\0" * 64)
    return buf.getvalue()


def _compressed(data: bytes) -> bytes:
    doc, arrays = unpack(data)
    buf = io.BytesIO()
    _write_raw(buf, json.dumps(doc), arrays, compress=True)
    return buf.getvalue()


BAD_FILES = [
    ("empty", lambda d: b"", "not an online head state"),
    ("random bytes", lambda d: bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
     "not an online head state"),
    ("truncated", lambda d: d[: len(d) // 2], "corrupt or truncated"),
    ("first bytes only", lambda d: d[:10], "corrupt or truncated"),
    ("flipped byte", _flip_inside, "replay.X.npy' is corrupt"),
    ("huge array header", _huge_header, "header says shape \\(1000000000000,\\)"),
    ("compressed member", _compressed, "is compressed"),
    ("no document", lambda d: _zip_without_json(d), "no state.json"),
    ("NaN in JSON", lambda d: _zip_with_json(d, '{"format": NaN}'), "state.json is not valid JSON: NaN"),
    ("JSON bomb", lambda d: _zip_with_json(d, "[" * 100000 + "]" * 100000), "state.json is not valid JSON"),
    ("JSON list", lambda d: _zip_with_json(d, "[1, 2]"), "must hold a JSON object"),
]


def _zip_with_json(data: bytes, text: str) -> bytes:
    _, arrays = unpack(data)
    buf = io.BytesIO()
    _write_raw(buf, text, arrays)
    return buf.getvalue()


def _zip_without_json(data: bytes) -> bytes:
    _, arrays = unpack(data)
    buf = io.BytesIO()
    _write_raw(buf, None, arrays)
    return buf.getvalue()


@pytest.mark.parametrize("what, damage, match", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_corrupt_files_are_clear_errors(tmp_path, small_state, what, damage, match):
    path = tmp_path / "head_state.npz"
    path.write_bytes(damage(small_state))
    with pytest.raises(StateFileError, match=match):
        OnlineHead.load(path)


def test_a_diverged_head_is_not_saved(online_head, tmp_path):
    """NaN weights would make an unloadable file: save refuses them and leaves no file."""
    online_head.mlp.coefs_[0][0, 0] = np.nan
    with pytest.raises(StateFileError, match="NaN or Inf"):
        online_head.save(tmp_path / "head_state.npz")
    assert not (tmp_path / "head_state.npz").exists()


# ---- legacy migration -------------------------------------------------------------------------------------------
def test_legacy_state_migrates_once_with_the_flag(online_head, online_domains, tmp_path, legacy_state_writer,
                                                  monkeypatch):
    """Refused without the flag; with it: head_state.npz written beside the pickle (left unchanged), the same
    state as the pickled head, continuing identically; later loads read the npz, never the pickle."""
    inf = online_domains["infant"]
    for i in range(20):
        online_head.learn_one(inf.X_train[i], int(inf.y_train[i]))
    legacy = legacy_state_writer(online_head, tmp_path / "run" / "head_state.pkl")
    before = legacy.read_bytes()
    with pytest.raises(StateFileError, match="--migrate-legacy-state"):
        OnlineHead.load(legacy.parent)
    assert not (tmp_path / "run" / "head_state.npz").exists()

    migrated = OnlineHead.load(legacy.parent, trust_legacy_pickle=True)
    new = tmp_path / "run" / "head_state.npz"
    assert new.is_file() and legacy.read_bytes() == before
    assert unpack(new.read_bytes())[0]["migrated_from"]["file"] == "head_state.pkl"
    _assert_same_state(online_head, migrated)

    def no_unpickling(*args):
        raise AssertionError("the legacy pickle was read again")

    monkeypatch.setattr(online_head_module, "read_legacy_pickle", no_unpickling)
    for src in (legacy.parent, legacy, new):  # the folder, the old path (a config may name it), the new file
        again = OnlineHead.load(src)
        _assert_same_state(online_head, again)
    for h in (online_head, migrated):
        _continue(h, inf)
    assert _same_weights(online_head, migrated)
    _assert_same_state(online_head, migrated)


def test_a_legacy_pickle_changed_after_migration_is_refused(online_head, tmp_path, legacy_state_writer):
    legacy = legacy_state_writer(online_head, tmp_path / "head_state.pkl")
    OnlineHead.load(legacy, trust_legacy_pickle=True)
    online_head.version += 1
    legacy_state_writer(online_head, legacy)  # e.g. an older infantino wrote the pickle again
    with pytest.raises(StateFileError, match="changed after it was migrated"):
        OnlineHead.load(tmp_path)
    with pytest.raises(StateFileError, match="was not migrated from it"):
        OnlineHead.load(legacy, trust_legacy_pickle=True)


def test_legacy_files_under_other_names_migrate_beside_them(online_head, tmp_path, legacy_state_writer):
    """The update service's online.<gen>.pkl becomes online.<gen>.npz."""
    legacy = legacy_state_writer(online_head, tmp_path / "online.3.pkl")
    OnlineHead.load(legacy, trust_legacy_pickle=True)
    assert (tmp_path / "online.3.npz").is_file()


def test_resolve_head_finds_legacy_folders(online_head, tmp_path, legacy_state_writer):
    """tracking.resolve_head accepts a folder whose state is only the legacy pickle; the shallowest folder wins."""
    from infantino.trainer import tracking

    deep = tmp_path / "a" / "b"
    online_head.save_dir(deep)
    shallow = tmp_path / "a"
    legacy_state_writer(online_head, shallow / "head_state.pkl")
    (shallow / "head.infh").write_bytes(online_head.to_head().to_bytes())
    assert tracking.resolve_head(tmp_path) == shallow
    assert tracking.resolve_head(deep) == deep


# ---- no pickle outside the legacy reader ------------------------------------------------------------------------
def _pickle_imports(tree: ast.AST) -> list[ast.AST]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle",
                                                                          "joblib") for a in node.names):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("pickle", "dill", "joblib",
                                                                                         "cloudpickle"):
            found.append(node)
    return found


def test_pickle_is_imported_only_by_the_legacy_reader():
    """No trainer module imports pickle except trainer/legacy_state.py, and there only inside read_legacy_pickle."""
    trainer = Path(online_head_module.__file__).resolve().parent
    for f in sorted(trainer.rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        imports = _pickle_imports(tree)
        if f.name != "legacy_state.py":
            assert not imports, f"{f} imports pickle"
            continue
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and _pickle_imports(n)]
        assert [fn.name for fn in funcs] == ["read_legacy_pickle"] and len(imports) == 1
    for name in ("online_head.py", "replay.py", "conformal.py", "statefile.py", "mlp_state.py"):
        text = (trainer / name).read_text()
        assert "pickle.load" not in text and "allow_pickle=True" not in text, name

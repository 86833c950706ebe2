"""OTA apply on the device: verify, persist atomically, swap, reject with reasons, roll back, resume after restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fixtures_device import DEVICE_EXT, forge_update, make_head_chain, update_header
from infantino.device.head_store import CURRENT, PREVIOUS, HeadStore, StateLocked
from infantino.device.ota import OtaApplier
from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.errors import HeadError
from infantino.runtime.contract.head import Head


class Swapped:
    """Records what the applier swapped in (stands in for Pipeline.swap_head's effect)."""

    def __init__(self):
        self.heads = []

    def __call__(self, head):
        self.heads.append(head)


def make_applier(tmp_path, heads, pub, **kw):
    store = HeadStore(tmp_path / "state")
    store.load(heads[0])
    swapped = Swapped()
    return OtaApplier(store, pub, DEVICE_EXT, fleet="nursery", embedding_dim=64, swap=swapped, **kw), store, swapped


def test_full_then_delta_chain_is_applied_persisted_and_resumed(tmp_path, device_heads, keypair):
    _, _, sk, pk = keypair
    heads = device_heads
    ota, store, swapped = make_applier(tmp_path, heads, pk)
    r1 = ota.handle(hu.encode_full(heads[1], sk, fleet="nursery"), source="head")
    assert r1.status == "applied" and r1.version == 1
    blob, published2 = hu.encode_delta(heads[1], heads[2], sk, dtype="float16", fleet="nursery")
    r2 = ota.handle(blob, source="delta")
    assert r2.status == "applied" and r2.kind == "delta"
    assert swapped.heads[-1].sha256 == published2.sha256 == store.current.sha256
    assert store.previous.version == 1
    store.close()
    # a restart resumes with the last good head
    again = HeadStore(tmp_path / "state")
    loaded = again.load(heads[0])
    assert loaded.source == "current" and loaded.head.sha256 == published2.sha256 and again.previous.version == 1
    events = [e["event"] for e in again.read_journal()]
    assert events == ["applied", "applied"]
    again.close()


def test_repeated_full_head_is_a_silent_duplicate(tmp_path, device_heads, keypair):
    _, _, sk, pk = keypair
    ota, store, _ = make_applier(tmp_path, device_heads, pk)
    blob = hu.encode_full(device_heads[1], sk, fleet="nursery")
    assert ota.handle(blob).status == "applied"
    again = ota.handle(hu.encode_full(device_heads[1], sk, fleet="nursery"))  # re-encoded (other timestamp), same head
    assert again.status == "duplicate" and not ota.rejections
    store.close()


def _bad_updates(heads, keypair, other_keypair):
    """(name, expected reason, update bytes) for every way an update must be refused; current head is v1."""
    _, _, sk, _ = keypair
    good_full = hu.encode_full(heads[2], sk, fleet="nursery")
    base_hdr = update_header(good_full)
    delta_23, _ = hu.encode_delta(heads[2], heads[3], sk, fleet="nursery")
    flipped = bytearray(good_full)
    flipped[len(flipped) // 2] ^= 0x01
    other_ext = heads[2].replace(extractor_id="f" * 64)
    nan_arrays = [w.copy() for w in heads[2].weights]
    nan_arrays[0][0, 0] = np.nan
    wrong_arrays = [np.zeros((32, 16), np.float32), np.zeros(16, np.float32), np.zeros((16, 7), np.float32),
                    np.zeros(7, np.float32)]
    delta_hdr = update_header(hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")[0])
    small_head = make_head_chain(2, hidden=(8,))[1].replace(version=9)
    return [
        ("bad signature", "bad_signature", hu.encode_full(heads[2], other_keypair, fleet="nursery")),
        ("flipped byte", "bad_signature", bytes(flipped)),
        ("truncated", "bad_signature", good_full[:-100]),  # the signature is checked before anything is parsed
        ("garbage", "bad_signature", b"INFU" + os.urandom(200)),
        ("signed but malformed", "corrupt", forge_update({"dtype": "int4"}, list(heads[2].weights), "float32", sk,
                                                         base_hdr)),
        ("other fleet", "wrong_fleet", hu.encode_full(heads[2], sk, fleet="playroom")),
        ("not an update", "corrupt", b"hello"),
        ("wrong extractor", "wrong_extractor", hu.encode_full(other_ext, sk, fleet="nursery")),
        ("repeated version", "stale_version", hu.encode_full(heads[2].replace(version=1), sk, fleet="nursery")),
        ("old version", "stale_version", hu.encode_full(heads[0], sk, fleet="nursery")),
        ("wrong base", "wrong_base", delta_23),
        ("delta with other shapes", "wrong_shapes",
         forge_update({"kind": "delta", "base_version": 1, "version": 2}, wrong_arrays[:2] + [np.zeros((16, 7), np.float32), np.zeros(7, np.float32)], "float32", sk, delta_hdr)),
        ("full with NaN weights", "invalid_weights", forge_update({}, nan_arrays, "float32", sk, base_hdr)),
        ("result hash mismatch", "hash_mismatch",
         forge_update({"result_sha256": "0" * 64}, list(heads[2].weights), "float32", sk, base_hdr)),
        ("wrong input size", "wrong_input_dim",
         hu.encode_full(Head(weights=tuple(wrong_arrays), version=7, extractor_id=DEVICE_EXT), sk, fleet="nursery")),
        ("other hidden size is fine but classes differ", "wrong_classes",
         forge_update({"classes": list(reversed(small_head.classes))}, list(small_head.weights), "float32", sk,
                      update_header(hu.encode_full(small_head, sk, fleet="nursery")) | {"result_sha256": small_head.sha256})),
    ]


def test_every_bad_update_is_rejected_with_its_reason_and_the_head_is_unchanged(tmp_path, device_heads, keypair):
    from infantino.runtime.contract.signing import generate_keypair, load_private_key

    _, _, sk, pk = keypair
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    other = load_private_key(tmp_path / "other.key")
    ota, store, swapped = make_applier(tmp_path, device_heads, pk)
    assert ota.handle(hu.encode_full(device_heads[1], sk, fleet="nursery")).applied
    on_disk = (tmp_path / "state" / CURRENT).read_bytes()
    for name, reason, blob in _bad_updates(device_heads, keypair, other):
        res = ota.handle(blob, source=name)
        assert res.status == "rejected" and res.reason == reason, (name, res)
        assert store.current.sha256 == device_heads[1].sha256 and store.current.version == 1, name
        assert (tmp_path / "state" / CURRENT).read_bytes() == on_disk, name
        assert len(swapped.heads) == 1, name
    rejected = [e for e in store.read_journal() if e["event"] == "rejected"]
    assert len(rejected) == len(_bad_updates(device_heads, keypair, other))
    # still healthy afterwards: a good update goes through
    blob, pub2 = hu.encode_delta(device_heads[1], device_heads[2], sk, fleet="nursery")
    assert ota.handle(blob).applied and store.current.sha256 == pub2.sha256
    store.close()


def test_missed_delta_requests_the_retained_full_head(tmp_path, device_heads, keypair):
    _, _, sk, pk = keypair
    asked = []
    ota, store, _ = make_applier(tmp_path, device_heads, pk, request_full_head=lambda: asked.append(1))
    _, h1 = hu.encode_delta(device_heads[0], device_heads[1], sk, fleet="nursery")
    blob2, h2 = hu.encode_delta(h1, device_heads[2], sk, fleet="nursery")  # device never got v1
    res = ota.handle(blob2)
    assert res.reason == "wrong_base" and asked == [1]
    assert ota.handle(hu.encode_full(h2, sk, fleet="nursery")).applied and store.current.sha256 == h2.sha256
    store.close()


def test_rollback_returns_to_previous_and_refuses_the_bad_version(tmp_path, device_heads, keypair):
    _, _, sk, pk = keypair
    h = device_heads
    ota, store, swapped = make_applier(tmp_path, h, pk)
    assert ota.rollback().reason == "no_previous"
    assert ota.handle(hu.encode_full(h[1], sk, fleet="nursery")).applied
    assert ota.handle(hu.encode_full(h[2], sk, fleet="nursery")).applied
    res = ota.rollback()
    assert res.status == "rolled_back" and store.current.version == 1 and swapped.heads[-1].version == 1
    assert ota.handle(hu.encode_full(h[2], sk, fleet="nursery")).reason == "rolled_back"
    assert ota.rollback().reason == "no_previous"
    store.close()
    again = HeadStore(tmp_path / "state")
    assert again.load(h[0]).head.version == 1 and again.blocked_up_to == 2
    again.close()
    ota, store, _ = make_applier(tmp_path, h, pk)
    assert ota.handle(hu.encode_full(h[2], sk, fleet="nursery")).reason == "rolled_back"
    assert ota.handle(hu.encode_full(h[3], sk, fleet="nursery")).applied  # newer than the bad one: accepted
    store.close()


def test_store_falls_back_from_corrupt_current_to_previous_to_bundle(tmp_path, device_heads):
    h = device_heads
    d = tmp_path / "state"
    with HeadStore(d) as s:
        s.load(h[0])
        s.commit(h[1])
        s.commit(h[2])
    (d / CURRENT).write_bytes((d / CURRENT).read_bytes()[:-10])
    with HeadStore(d) as s:
        got = s.load(h[0])
        assert got.source == "previous" and got.head.version == 1 and got.problems
    (d / PREVIOUS).write_bytes(b"garbage")
    with HeadStore(d) as s:
        got = s.load(h[0])
        assert got.source == "bundle" and got.head.version == 0
    # a stored head for another extractor is never used
    other = make_head_chain(2, extractor_id="e" * 64)[1].replace(version=5)
    (d / CURRENT).write_bytes(other.to_bytes())
    with HeadStore(d) as s:
        assert s.load(h[0]).source == "bundle"
    # a newer bundle head wins over an older stored one
    (d / CURRENT).write_bytes(h[1].to_bytes())
    with HeadStore(d) as s:
        assert s.load(h[3]).source == "bundle"


def test_load_current_without_a_bundle(tmp_path, device_heads):
    h = device_heads
    d = tmp_path / "state"
    with HeadStore(d) as s:
        with pytest.raises(HeadError, match="no usable head"):
            s.load_current()
        s.load(h[0])
        s.commit(h[1])
        s.commit(h[2])
        assert s.load_current().sha256 == h[2].sha256
    (d / CURRENT).write_bytes(b"INFH broken")
    with HeadStore(d) as s:
        assert s.load_current(DEVICE_EXT).version == 1
        with pytest.raises(HeadError, match="another extractor"):
            s.load_current("0" * 64)


def test_interrupted_rollback_is_finished_at_start(tmp_path, device_heads):
    import json

    h = device_heads
    d = tmp_path / "state"
    with HeadStore(d) as s:
        s.load(h[0])
        s.commit(h[1])
        s.commit(h[2])
    # crash after the block was written, before head.infh was replaced
    (d / "store.json").write_text(json.dumps({"blocked_up_to": 2, "rolled_back_sha256": h[2].sha256}))
    with HeadStore(d) as s:
        assert s.load(h[0]).head.version == 1


def test_state_dir_is_locked_against_a_second_writer(tmp_path, device_heads):
    with HeadStore(tmp_path / "state"):
        with pytest.raises(StateLocked, match="in use"):
            HeadStore(tmp_path / "state")
    HeadStore(tmp_path / "state").close()


def test_rollback_without_previous_is_a_clear_error(tmp_path, device_heads):
    with HeadStore(tmp_path / "s") as s:
        s.load(device_heads[0])
        with pytest.raises(HeadError, match="no previous head"):
            s.rollback()


PERSIST_WORKER = r"""
import sys
from pathlib import Path
from infantino.device.head_store import HeadStore
from infantino.device.ota import OtaApplier
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.signing import load_public_key

state, updates_dir, pub = sys.argv[1], Path(sys.argv[2]), load_public_key(sys.argv[3])
bundle_head = Head.from_bytes((updates_dir / "bundle.infh").read_bytes())
store = HeadStore(state)
store.load(bundle_head)
ota = OtaApplier(store, pub, bundle_head.extractor_id, fleet="nursery", embedding_dim=64)
n = len(list(updates_dir.glob("delta-*.bin")))
print("ready", store.current.version, flush=True)
while True:  # apply the chain of deltas from the stored version on, then start over from a full head
    v = store.current.version + 1
    if v > n:
        store.commit(bundle_head)  # back to the start of the chain; keeps the loop writing
        continue
    res = ota.handle((updates_dir / f"delta-{v}.bin").read_bytes())
    if not res.applied:
        res = ota.handle((updates_dir / f"full-{v}.bin").read_bytes())
    if not res.applied:
        print("unexpected", res, flush=True)
        sys.exit(3)
"""


def test_sigkill_during_persist_always_leaves_a_valid_head(tmp_path, keypair):
    """kill -9 a process that applies and persists updates in a loop, 30 times at random moments."""
    _, pub_path, sk, _ = keypair
    heads = make_head_chain(12)
    upd = tmp_path / "updates"
    upd.mkdir()
    (upd / "bundle.infh").write_bytes(heads[0].to_bytes())
    valid = {heads[0].sha256}
    prev = heads[0]
    for v in range(1, len(heads)):
        blob, prev = hu.encode_delta(prev, heads[v], sk, dtype="float16" if v % 2 else "float32", fleet="nursery")
        (upd / f"delta-{v}.bin").write_bytes(blob)
        (upd / f"full-{v}.bin").write_bytes(hu.encode_full(prev, sk, fleet="nursery"))
        valid.add(prev.sha256)
    script = tmp_path / "worker.py"
    script.write_text(PERSIST_WORKER)
    state = tmp_path / "state"
    rnd = random.Random(7)
    versions_seen = set()
    for i in range(30):
        p = subprocess.Popen([sys.executable, str(script), str(state), str(upd), str(pub_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        assert line.startswith("ready"), (line, p.stderr.read())
        time.sleep(rnd.uniform(0.0, 0.03))
        assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        # what a restarted daemon finds: a valid head that is one of the published versions
        with HeadStore(state) as s:
            loaded = s.load(heads[0])
            assert loaded.source in ("current", "previous", "bundle")
            assert loaded.head.sha256 in valid, f"kill {i}: unknown head {loaded.head.sha256[:12]}"
            cur = Head.from_bytes((state / CURRENT).read_bytes()) if (state / CURRENT).exists() else None
            assert cur is None or cur.sha256 in valid, f"kill {i}: current file is not a valid version"
            versions_seen.add(loaded.head.version)
        assert not list(state.glob(".*.tmp")), "temp files are cleaned at open"
    assert len(versions_seen) > 1  # the kills really landed at different points of the chain

"""Faults, each with its figure in docs/reliability.md: kill -9 anywhere in the update path (200 times), a full
disk and a read-only state dir, a client whose socket is cut, corrupt camera frames."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from fixtures_device import DEVICE_EXT, make_head_chain
from fixtures_mqtt import wait_for
from infantino.device.head_store import CURRENT, JOURNAL, LOCK, PREVIOUS, STATE, HeadStore
from infantino.device.ota import OtaApplier
from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.topics import Topics

T = Topics()
KILLS = int(os.environ.get("INFANTINO_FAULT_KILLS", "200"))
STATE_FILES = {CURRENT, PREVIOUS, STATE, JOURNAL, LOCK}


def _chain(sk, n=12):
    heads = make_head_chain(n)
    updates, valid, prev = [], {heads[0].sha256}, heads[0]
    for v in range(1, n):
        delta, prev = hu.encode_delta(prev, heads[v], sk, dtype="float16" if v % 2 else "float32", fleet="nursery")
        updates.append((delta, hu.encode_full(prev, sk, fleet="nursery")))
        valid.add(prev.sha256)
    return heads, updates, valid


def _apply_forever(state, heads, updates, pk) -> None:
    """The child: apply the chain, start over, forever (until killed). Never returns."""
    try:
        store = HeadStore(state)
        store.load(heads[0])
        ota = OtaApplier(store, pk, DEVICE_EXT, fleet="nursery", embedding_dim=64)
        while True:
            v = store.current.version + 1
            if v > len(updates):
                store.commit(heads[0])
                continue
            delta, full = updates[v - 1]
            if not ota.handle(delta).applied:
                ota.handle(full)
    finally:
        os._exit(3)


def test_kill_9_anywhere_in_the_update_path_leaves_a_valid_head_and_no_garbage(tmp_path, keypair):
    """A forked applier (imports already loaded, so each round costs milliseconds) is SIGKILLed at a random
    moment KILLS times; after each, what a restarting daemon finds is a published version, and the state dir
    holds nothing but its own files."""
    _, _, sk, pk = keypair
    heads, updates, valid = _chain(sk)
    state = tmp_path / "state"
    rnd = random.Random(11)
    versions, garbage_cleaned = set(), 0
    for i in range(KILLS):
        pid = os.fork()
        if pid == 0:
            _apply_forever(state, heads, updates, pk)
        time.sleep(rnd.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"kill {i}: child exited early"
        garbage_cleaned += len(list(state.glob(".*.tmp")))
        with HeadStore(state) as s:  # what a restarted daemon does
            loaded = s.load(heads[0])
            assert loaded.head.sha256 in valid, f"kill {i}: unknown head {loaded.head.sha256[:12]}"
            cur = Head.from_bytes((state / CURRENT).read_bytes()) if (state / CURRENT).exists() else None
            assert cur is None or cur.sha256 in valid, f"kill {i}: current file is not a valid version"
            versions.add(loaded.head.version)
        left = {p.name for p in state.iterdir()}
        assert left <= STATE_FILES, f"kill {i}: unexpected files {left - STATE_FILES}"
    assert len(versions) >= 5, versions  # the kills landed all along the chain
    print(f"\n{KILLS} kills: versions found {sorted(versions)}, temp files cleaned at restart: {garbage_cleaned}")


def _tmpfs(path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


def test_full_disk_and_read_only_state_dir_refuse_the_update_and_keep_the_head(tmp_path, keypair, device_heads):
    """The state dir on a 64 KB tmpfs filled to the last byte, then made read-only: each update is refused
    with `persist_failed`, counted and the running head kept; after space returns the next update applies."""
    _, _, sk, pk = keypair
    mnt = tmp_path / "small"
    if not _tmpfs(mnt, 64):
        pytest.skip("cannot mount a tmpfs here (not root or no mount namespace)")
    try:
        store = HeadStore(mnt / "state")
        store.load(device_heads[0])
        swapped = []
        ota = OtaApplier(store, pk, DEVICE_EXT, fleet="nursery", embedding_dim=64, swap=swapped.append)
        assert ota.handle(hu.encode_full(device_heads[1], sk, fleet="nursery")).applied
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError:
            pass
        finally:
            os.close(fd)
        res = ota.handle(hu.encode_full(device_heads[2], sk, fleet="nursery"))
        assert res.reason == "persist_failed" and "No space left" in res.message, res
        assert store.current.version == 1 and [h.version for h in swapped] == [1]
        assert not list((mnt / "state").glob(".*.tmp"))  # the failed write left nothing behind
        assert Head.from_bytes((mnt / "state" / CURRENT).read_bytes()).version == 1
        filler.unlink()
        # the state dir turns read-only under the running daemon (a read-only bind mount over it)
        state = str(mnt / "state")
        subprocess.run(["mount", "--bind", state, state], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", state], check=True)
        res = ota.handle(hu.encode_full(device_heads[2], sk, fleet="nursery"))
        subprocess.run(["umount", state], check=True)
        assert res.reason == "persist_failed" and "Read-only" in res.message, res
        assert ota.handle(hu.encode_full(device_heads[2], sk, fleet="nursery")).applied
        assert ota.rejections == {"persist_failed": 2}
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.mqtt
def test_a_cut_client_socket_reconnects_and_still_gets_updates(tmp_path, mosquitto, keypair):
    """The daemon's TCP connection is closed under it (a NAT timeout, a cable pulled): paho notices, the daemon
    reconnects with back-off, resubscribes, and the next update applies. Figure: seconds to reconnect."""
    from test_device_daemon import device_config, start_daemon, stop_daemon
    from fixtures_mqtt import mqtt_broker_config
    from infantino.runtime.mqtt import MqttLink

    heads = make_head_chain(4)
    priv, pub, sk, pk = keypair
    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair)
    obs = MqttLink(mqtt_broker_config(mosquitto), "cut-observer", clean_start=True).start()
    try:
        assert obs.wait_connected(5) and wait_for(lambda: d.link.connected, 10)
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1, 10)
        sock = d.link.link.client.socket()
        t0 = time.monotonic()
        sock.shutdown(2)  # both directions: the broker and paho see the connection die
        assert wait_for(lambda: not d.link.connected, 10)
        assert wait_for(lambda: d.link.connected, 20)
        reconnect_s = time.monotonic() - t0
        blob, _ = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")
        obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.version == 2, 10)
        print(f"\nreconnected {reconnect_s:.2f} s after the socket was cut")
    finally:
        obs.stop()
        stop_daemon(d, t)


@pytest.mark.mqtt
def test_corrupt_camera_frames_are_reported_and_the_daemon_keeps_going(tmp_path, mosquitto, keypair):
    """A camera that returns garbage (wrong dtype, wrong shape, empty, NaN-like floats) between good frames:
    each bad frame is an error in the status, good frames keep being processed."""
    from fixtures_device import synthetic_frames
    from test_device_daemon import device_config, start_daemon, stop_daemon

    heads = make_head_chain(2)
    bad = [np.zeros((0, 0, 3), np.uint8), np.full((48, 64), np.nan, np.float32), np.zeros((48, 64, 7), np.uint8),
           np.zeros((2, 2, 2, 2), np.uint8)]

    def source():
        good = synthetic_frames(100)
        for i in range(400):
            yield bad[i % len(bad)] if i % 3 == 1 else next(good)

    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair, source=source)
    try:
        assert wait_for(lambda: d.stats.frames >= 30, 20)
        assert any("frame" in e for e in d.errors), list(d.errors)
        assert t.is_alive() and all(th.is_alive() for th in d._threads)
    finally:
        stop_daemon(d, t)

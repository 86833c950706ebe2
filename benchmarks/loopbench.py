"""Measure the online-learning loop on loopback: sample published by a device -> head applied on that device.

`measure_loop()` runs a real Mosquitto, the real update service in its own process (`infantino-train serve`:
OnlineHead.learn_one, durable version record, signed delta) and the real DeviceDaemon in this process (MQTT
link, OTA verify, atomic persist, swap), sends N labelled samples one at a time from the device and times each
until the device runs the head version that includes it. It also reports update payload sizes (full,
delta float32/float16, with and without zlib) and the device's apply time per update kind.
Run `python -m infantino.benchmarks.loopbench --n 200` for a JSON report (`infantino-bench online` calls it too).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from infantino.benchmarks.broker import MosquittoBroker
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.device.head_store import HeadStore
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.head_update import apply_update, encode_delta, encode_full
from infantino.runtime.contract.layout import HEAD_FILE, HEAD_STATE_FILE
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.signing import generate_keypair, load_private_key, load_public_key
from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig
from infantino.trainer.service import TrainerServiceConfig

log = logging.getLogger(__name__)


class HeadHolder:
    """The part of a Pipeline the OTA path touches (head, swap_head), for timing updates without a camera."""

    def __init__(self, head):
        self._head = head
        self._lock = threading.Lock()

    @property
    def head(self):
        with self._lock:
            return self._head

    def swap_head(self, new):
        with self._lock:
            old, self._head = self._head, new
        return old


def _pct(values, qs=(50, 95, 99)) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    out = {f"p{q}": round(float(np.percentile(a, q)), 3) for q in qs}
    out.update(mean=round(float(a.mean()), 3), max=round(float(a.max()), 3), n=int(a.size))
    return out


def _fit_online_head(d: Path, extractor_id: str, hidden, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(700, 64)).astype(np.float32)
    y = np.arange(700) % 7
    X[np.arange(700), y] += 2.0
    oh = OnlineHead(OnlineHeadConfig(hidden=tuple(hidden), seed=seed), extractor_id=extractor_id)
    oh.fit(X, y, epochs=3)
    oh.save_dir(d)
    return oh


def payload_and_apply_figures(head, next_head, private_key, public_key, state_dir: Path, reps: int = 200) -> dict:
    """Update sizes and device-side apply/persist times for one realistic update (one learn_one step)."""
    sizes, apply_ms = {}, {}
    blobs = {"full_f32": encode_full(next_head, private_key, fleet="bench")}
    sizes["full_f32"] = len(blobs["full_f32"])
    sizes["full_f32_zlib"] = len(encode_full(next_head, private_key, compression="zlib", fleet="bench"))
    for dt, tag in (("float32", "f32"), ("float16", "f16")):
        blob, _ = encode_delta(head, next_head, private_key, dtype=dt, fleet="bench")
        blobs[f"delta_{tag}"] = blob
        sizes[f"delta_{tag}"] = len(blob)
        sizes[f"delta_{tag}_zlib"] = len(encode_delta(head, next_head, private_key, dtype=dt, compression="zlib",
                                                      fleet="bench")[0])
    for name, blob in blobs.items():
        cur = None if name.startswith("full") else head
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            apply_update(cur, blob, public_key, head.extractor_id, fleet="bench")
            ts.append((time.perf_counter() - t0) * 1e3)
        apply_ms[name] = _pct(ts)
    with HeadStore(state_dir) as store:
        store.load(head)
        ts = []
        for i in range(max(20, reps // 5)):
            h = next_head.replace(version=head.version + 1 + i)
            t0 = time.perf_counter()
            store.commit(h)
            ts.append((time.perf_counter() - t0) * 1e3)
        apply_ms["persist"] = _pct(ts)
    return {"payload_bytes": sizes, "apply_ms": apply_ms, "weights": int(sum(w.size for w in head.weights))}


def start_service(config: Path, log_path: Path, *extra: str, quiet: bool = True) -> tuple[subprocess.Popen, object]:
    """`infantino-train serve --config config [extra...]` as a subprocess logging to log_path (appended):
    (process, open log file), for stop_service."""
    log_file = open(log_path, "ab")
    cmd = [sys.executable, "-m", "infantino.trainer.commands.serve", *(["-q"] if quiet else []), "--config",
           str(config), *extra]
    return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT), log_file


def stop_service(svc: subprocess.Popen, log_file) -> None:
    """SIGTERM the update service (it publishes, persists and acknowledges), kill it after 30 s, close its log."""
    svc.send_signal(signal.SIGTERM)
    try:
        svc.wait(30)
    except subprocess.TimeoutExpired:
        svc.kill()
        svc.wait()
    log_file.close()


def measure_loop(n: int = 100, *, delta_dtype: str = "float32", hidden=(100,), persistence: str = "periodic",
                 workdir: str | Path | None = None, broker=None, timeout_s: float = 10.0, seed: int = 0) -> dict:
    """End-to-end latency (sample published -> head applied on the device) p50/p95/p99 over `n` updates,
    payload sizes and apply times. `broker` may be a running MosquittoBroker, else one is started with
    `persistence` "periodic" (saved every 10 s, the shipped example's setting), "every-change" or "off"."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-loopbench-"))
    work.mkdir(parents=True, exist_ok=True)
    generate_keypair(work / "signing.key", work / "signing.pub")
    sk, pk = load_private_key(work / "signing.key"), load_public_key(work / "signing.pub")
    ext = "b" * 64
    _fit_online_head(work / "head", ext, hidden, seed)
    head0 = Head.from_bytes((work / "head" / HEAD_FILE).read_bytes())

    # sizes and apply times for one typical update (one learn_one step from head0)
    probe = _fit_online_head(work / "probe", ext, hidden, seed)
    rng = np.random.default_rng(seed + 1)
    probe.learn_one(rng.normal(size=64).astype(np.float32), label="happy")
    figures = payload_and_apply_figures(head0, probe.to_head().replace(version=head0.version + 1), sk, pk,
                                        work / "apply-state")

    own_broker = broker is None
    if own_broker:
        if persistence not in ("periodic", "every-change", "off"):
            raise ValueError(f"persistence must be periodic, every-change or off, got {persistence!r}")
        broker = MosquittoBroker(work / "mosquitto", persistence=persistence != "off",
                                 save_every_change=persistence == "every-change").start()
    bcfg = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    # the trainer service runs in its own process, as in production (and off the device's GIL)
    svc_cfg = {
        "broker": bcfg, "fleets": [{"name": "bench", "initial_head": str(work / "head" / HEAD_FILE),
                                    "head_state": str(work / "head" / HEAD_STATE_FILE), "devices": ["bench-cam"]}],
        "state_dir": str(work / "svc"), "signing_key": str(work / "signing.key"), "min_interval_ms": 0,
        "delta_dtype": delta_dtype, "mlflow": {"enabled": False},
        "service_id": f"bench-trainer-{uuid.uuid4().hex[:6]}"}
    validate_config(TrainerServiceConfig, svc_cfg)
    (work / "trainer.yaml").write_text(json.dumps(svc_cfg))  # JSON is YAML
    (work / "bundle").mkdir(exist_ok=True)
    dcfg = validate_config(DeviceConfig, {
        "device_id": "bench-cam", "fleet": "bench", "bundle": str(work / "bundle"), "public_key": str(work / "signing.pub"),
        "camera": {"source": 0, "reopen_on_end": False, "stall_timeout_s": 3600},
        "broker": {**bcfg, "client_id": f"bench-cam-{uuid.uuid4().hex[:6]}"}, "publish": {"status_interval_s": 60},
        "state_dir": str(work / "device-state")})
    holder = HeadHolder(head0)
    daemon = DeviceDaemon(dcfg, holder, BundleFacts(ext, head0, 64, "loopbench"), source_factory=lambda: iter(()),
                          update_public_key=pk, backend_name="none")
    applied: dict[int, object] = {}
    cond = threading.Condition()

    def on_applied(res):
        with cond:
            applied[res.version] = res
            cond.notify_all()

    daemon.on_applied.append(on_applied)
    lat, to_device, on_device, verify, persist, swap, publish_to_device = [], [], [], [], [], [], []
    lost = 0
    svc, svc_log = start_service(work / "trainer.yaml", work / "service.log", quiet=False)
    try:
        daemon.start()
        head_topic = daemon.link.head_topic
        deadline = time.monotonic() + 60
        # ready when the service has published its retained head and the device has handled it
        while time.monotonic() < deadline and (daemon.link.link.is_subscribed(head_topic) or not daemon.link.connected):
            if svc.poll() is not None:
                raise RuntimeError(f"the update service exited: {(work / 'service.log').read_text()[-2000:]}")
            time.sleep(0.02)
        if daemon.link.link.is_subscribed(head_topic):
            raise RuntimeError("the update service did not publish its head within 60 s")
        for i in range(n):
            expected = holder.head.version + 1
            k = i % 7
            e = rng.normal(size=64)
            e[k] += 2.0
            msg = SampleMessage(device_id="bench-cam", fleet="bench", sample_id=f"bench-{i}-{uuid.uuid4().hex[:6]}",
                                embedding=[float(v) for v in e], extractor_id=ext, label=CLASSES[k])
            t_wall = time.time()
            daemon.link.publish_sample(msg)
            with cond:
                ok = cond.wait_for(lambda: expected in applied, timeout_s)
            if not ok:
                lost += 1
                continue
            res = applied[expected]
            lat.append((res.applied_at - t_wall) * 1e3)  # applied_at: when the new head was swapped in
            to_device.append((res.received_at - t_wall) * 1e3)
            on_device.append((res.applied_at - res.received_at) * 1e3)
            verify.append(res.verify_ms)
            persist.append(res.persist_ms)
            swap.append(res.swap_ms)
            if res.created_at:
                publish_to_device.append((res.received_at - res.created_at) * 1e3)
    finally:
        daemon.request_stop()
        daemon.stop()
        stop_service(svc, svc_log)
        if own_broker:
            broker.stop()
    return {
        "n": n, "timeouts": lost, "delta_dtype": delta_dtype, "hidden": list(hidden),
        "setup": f"mosquitto on loopback (persistence {persistence if own_broker else 'as configured'}), "
                 f"update service in its own process, device daemon (OTA path) in this one",
        "latency_ms": _pct(lat),
        "breakdown_ms": {"sample_to_update_received": _pct(to_device),
                         "update_signed_to_received": _pct(publish_to_device),
                         "received_to_applied": _pct(on_device),
                         "verify": _pct(verify), "persist": _pct(persist), "swap": _pct(swap)},
        **figures,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infantino.benchmarks.loopbench", description=__doc__.strip().splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="number of updates to time")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="delta dtype")
    p.add_argument("--persistence", choices=("periodic", "every-change", "off"), default="periodic",
                   help="broker persistence (periodic = every 10 s, as the shipped example)")
    p.add_argument("--hidden", type=int, nargs="+", default=[100], help="hidden layer sizes of the head")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = measure_loop(args.n, delta_dtype=args.dtype, hidden=tuple(args.hidden),
                       persistence=args.persistence)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

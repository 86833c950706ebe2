"""Several update-service workers sharing N fleets on loopback: fleet ownership, takeover and throughput.

`WorkerPool` runs `infantino-train serve` processes on one config and state folder (each with its own
--worker-id); `FleetWatch` is one MQTT client that follows every fleet's updates (every version's sha256, the
signed-to-received latency of each delta) and retained service statuses (owner worker, samples learned);
`measure_workers` streams labelled samples to F fleets x M devices with 1, 2, 4... workers and reports samples
learned per second, update latency p50/p99, the time to drain the stream, and CPU per worker and of the broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from infantino.benchmarks.broker import MosquittoBroker
from infantino.benchmarks.fleet import cpu_seconds
from infantino.benchmarks.fleetsim import EXT, class_embeddings, fit_sim_head
from infantino.benchmarks.loopbench import _pct, start_service
from infantino.benchmarks.timing import wait_until
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import UpdateRejected
from infantino.runtime.contract.head_update import open_update
from infantino.runtime.contract.layout import HEAD_FILE, HEAD_STATE_FILE
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.signing import generate_keypair, load_public_key
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import BrokerConfig, MqttLink
from infantino.trainer.service import TrainerServiceConfig


def fleets_config(work: Path, broker: BrokerConfig, fleets: int, devices: int, head_dir: Path, **over) -> Path:
    """trainer.yaml for F fleets of M listed devices each (fleet f03's devices are f03-d00...), on one state folder."""
    generate_keypair(work / "signing.key", work / "signing.pub")
    data = {"broker": broker.model_dump(exclude_none=True, mode="json"), "service_id": f"pool-{uuid.uuid4().hex[:6]}",
            "fleets": [{"name": f"f{i:02d}", "initial_head": str(head_dir / HEAD_FILE),
                        "head_state": str(head_dir / HEAD_STATE_FILE),
                        "devices": [f"f{i:02d}-d{j:02d}" for j in range(devices)]} for i in range(fleets)],
            "state_dir": str(work / "svc"), "signing_key": str(work / "signing.key"), "min_interval_ms": 200,
            "delta_dtype": "float16", "mlflow": {"enabled": False}, "workers": {"rebalance_s": 0.5}, **over}
    validate_config(TrainerServiceConfig, data)
    path = work / "trainer.yaml"
    path.write_text(json.dumps(data))
    return path


class WorkerPool:
    """`infantino-train serve` worker processes on one config; start, kill -9, stop (SIGTERM) by worker id."""

    def __init__(self, work: Path, config: Path):
        self.work, self.config = work, config
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}

    def start(self, wid: str) -> subprocess.Popen:
        p, log = start_service(self.config, self.work / f"worker-{wid}.log", "--worker-id", wid)
        self.procs[wid], self._logs[wid] = p, log
        return p

    def kill(self, wid: str) -> None:
        p = self.procs[wid]
        p.kill()
        p.wait()

    def alive(self) -> list[str]:
        return [w for w, p in self.procs.items() if p.poll() is None]

    def log_tail(self, wid: str, n: int = 3000) -> str:
        return (self.work / f"worker-{wid}.log").read_text(errors="replace")[-n:]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for wid, p in self.procs.items():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self._logs[wid].close()


class FleetWatch:
    """Every fleet's updates and service statuses, from one MQTT client."""

    def __init__(self, broker: BrokerConfig, public_key, topics: Topics = Topics()):
        self.topics = topics
        self.public_key = public_key
        self.lock = threading.Lock()
        self.shas: dict[tuple[str, int], set[str]] = {}   # (fleet, version) -> result sha256s seen
        self.latency_ms: list[float] = []                 # signed -> received, per delta
        self.status: dict[str, dict] = {}                 # fleet -> its last service status
        self.retained: dict[str, int] = {}                # fleet -> version of the retained full head
        self.link = MqttLink(broker, f"watch-{uuid.uuid4().hex[:6]}", clean_start=True)
        self.link.subscribe(topics.fleet_delta("+"), self._on_update, qos=1)
        self.link.subscribe(topics.fleet_head("+"), self._on_update, qos=1)
        self.link.subscribe(topics.fleet_service_status("+"), self._on_status, qos=1)

    def start(self, timeout: float = 10.0) -> "FleetWatch":
        self.link.start()
        if not self.link.wait_connected(timeout):
            raise RuntimeError("the fleet watcher could not connect")
        return self

    def _on_update(self, m) -> None:
        try:
            upd = open_update(m.payload, self.public_key)
        except UpdateRejected:
            return
        sha = upd.header.get("result_sha256") or upd.header.get("weights_sha256")
        with self.lock:
            self.shas.setdefault((upd.fleet, upd.version), set()).add(sha)
            if m.topic.endswith("/delta") and upd.created_at and not m.retain:
                self.latency_ms.append((m.received_at - upd.created_at) * 1e3)
            if not m.topic.endswith("/delta"):
                self.retained[upd.fleet] = max(upd.version, self.retained.get(upd.fleet, -1))

    def _on_status(self, m) -> None:
        try:
            st = json.loads(m.payload)
        except ValueError:
            return
        with self.lock:
            self.status[st.get("fleet", "?")] = st

    def learned(self) -> dict[str, int]:
        with self.lock:
            return {f: int(s.get("samples_learned") or 0) for f, s in self.status.items()}

    def owners(self) -> dict[str, str]:
        with self.lock:
            return {f: s.get("worker") for f, s in self.status.items()}

    def versions_with_two_weights(self) -> list[tuple[str, int]]:
        with self.lock:
            return sorted(k for k, v in self.shas.items() if len(v) > 1)

    def stop(self) -> None:
        self.link.stop()


class SampleStream:
    """Labelled samples for F fleets x M devices at a fixed total rate, from one MQTT client."""

    def __init__(self, broker: BrokerConfig, fleets: int, devices: int, seed: int = 0):
        self.link = MqttLink(broker, f"stream-{uuid.uuid4().hex[:6]}", clean_start=True).start()
        if not self.link.wait_connected(10):
            raise RuntimeError("the sample stream could not connect")
        self.fleets, self.devices = fleets, devices
        self.rng = np.random.default_rng(seed)
        self.topics = Topics()
        self.sent: dict[str, int] = {f"f{i:02d}": 0 for i in range(fleets)}

    def run(self, seconds: float, rate: float, stop: Optional[threading.Event] = None,
            at: Optional[Callable[[float], None]] = None) -> int:
        """Send at `rate` samples/s for `seconds` (round robin over fleets and devices); `at(elapsed)` is called
        after each sample (e.g. to kill a worker mid-stream). Returns the number sent."""
        X, k = class_embeddings(self.rng, 4096)
        n, t0 = 0, time.monotonic()
        period = 1.0 / rate
        while time.monotonic() - t0 < seconds and not (stop is not None and stop.is_set()):
            fi = n % self.fleets
            dev = f"f{fi:02d}-d{(n // self.fleets) % self.devices:02d}"
            i = n % len(X)
            msg = SampleMessage(device_id=dev, fleet=f"f{fi:02d}", sample_id=f"{dev}-{uuid.uuid4().hex[:10]}",
                                embedding=X[i].tolist(), extractor_id=EXT, label=CLASSES[int(k[i])])
            payload = msg.model_dump_json(exclude_none=True)
            while True:  # paho's outgoing queue is full when the broker acknowledges slower than we send: wait
                pub = self.link.publish(self.topics.samples(dev), payload, qos=1)
                if not (pub.event.is_set() and pub.reason_code == 0x80):
                    break
                time.sleep(0.005)
            self.sent[f"f{fi:02d}"] += 1
            n += 1
            if at is not None:
                at(time.monotonic() - t0)
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return n

    def stop(self) -> None:
        self.link.stop()


def measure_workers(fleets: int = 10, devices: int = 20, workers=(1, 2, 4), seconds: float = 20.0,
                    rate: float = 600.0, workdir: str | Path | None = None,
                    progress: Callable[[str], None] = lambda s: None) -> dict:
    """For each worker count: a fresh broker and state, W workers, `rate` samples/s for `seconds`; figures."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-workers-"))
    head_dir = fit_sim_head(work / "head")
    rows = []
    for n in workers:
        d = work / f"w{n}"
        d.mkdir(parents=True, exist_ok=True)
        broker = MosquittoBroker(d / "mosquitto", persistence=False,
                                 extra_config="max_queued_messages 1000000\n").start()
        bcfg = BrokerConfig(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=2.0)
        cfg = fleets_config(d, bcfg, fleets, devices, head_dir)
        watch = FleetWatch(bcfg, load_public_key(d / "signing.pub")).start()
        pool = WorkerPool(d, cfg)
        stream = None
        try:
            progress(f"{n} worker(s): starting")
            for i in range(n):
                pool.start(f"w{i}")
            names = {f"f{i:02d}" for i in range(fleets)}
            balanced = wait_until(lambda: set(watch.owners()) >= names and len(set(watch.owners().values())) == n
                                  and max(list(watch.owners().values()).count(w) for w in set(watch.owners().values()))
                                  - min(list(watch.owners().values()).count(w) for w in set(watch.owners().values()))
                                  <= 1, 120)
            owners = watch.owners()
            base = sum(watch.learned().values())
            stream = SampleStream(bcfg, fleets, devices)
            cpu0 = {w: cpu_seconds(p.pid) for w, p in pool.procs.items()}
            bcpu0 = cpu_seconds(broker.proc.pid)
            progress(f"{n} worker(s): {rate:g} samples/s for {seconds:g} s over {fleets} fleets x {devices} devices")
            t0 = time.monotonic()
            sent = stream.run(seconds, rate)
            stream_s = time.monotonic() - t0
            drained = wait_until(lambda: sum(watch.learned().values()) - base >= sent, 300, 0.1)
            total_s = time.monotonic() - t0
            learned = sum(watch.learned().values()) - base
            cpu = {w: round(cpu_seconds(p.pid) - cpu0[w], 2) for w, p in pool.procs.items()}
            with watch.lock:
                lat = list(watch.latency_ms)
            rows.append({
                "workers": n, "fleets": fleets, "devices_per_fleet": devices, "balanced": balanced,
                "fleets_per_worker": sorted(list(owners.values()).count(w) for w in set(owners.values())),
                "offered_rate": rate, "samples_sent": sent, "samples_learned": learned, "drained": drained,
                "stream_s": round(stream_s, 2), "sent_per_s": round(sent / stream_s, 1),
                "drain_s": round(total_s - stream_s, 2),
                "learned_per_s": round(learned / total_s, 1),
                "update_latency_ms": _pct(lat), "versions_with_two_weights": len(watch.versions_with_two_weights()),
                "worker_cpu_s": cpu, "worker_cpu_share": round(sum(cpu.values()) / total_s, 2),
                "broker_cpu_s": round(cpu_seconds(broker.proc.pid) - bcpu0, 2), "cores": os.cpu_count(),
            })
            progress(json.dumps(rows[-1]))
        finally:
            if stream is not None:
                stream.stop()
            pool.stop()
            watch.stop()
            broker.kill()
    return {"rows": rows}

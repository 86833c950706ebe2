"""A fleet on loopback under load: N device daemons with their own MQTT clients, one update service in its own
process, each device sending labelled samples at `rate` per second for `seconds`.

Reported: whether every device converges to the service's last published version (and how long after the
stream stops), update latency (signed by the service -> applied on a device) p50/p99 over every device and
version, samples sent / learned (dropped = sent - learned), versions published, CPU seconds of the service and of
the device process, and the broker's message counters ($SYS). Devices share this process (their OTA path:
verify, persist with fsync, swap), so on a 2-core machine the device side competes with the service and the
broker for the same cores: read the CPU figures to see which side is the limit.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from infantino.benchmarks.broker import MosquittoBroker
from infantino.benchmarks.loopbench import HeadHolder, _fit_online_head, _pct, start_service, stop_service
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.layout import HEAD_FILE, HEAD_STATE_FILE
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.signing import generate_keypair, load_public_key
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import BrokerConfig, MqttLink
from infantino.trainer.service import TrainerServiceConfig

FLEET = "load"
EXT = "c" * 64


def cpu_seconds(pid: int | str, task: int | None = None) -> float:
    """utime + stime of a process, or of one of its threads (`task`: a native thread id), in seconds, from Linux
    /proc (0 when it is gone). pid "self" is this process."""
    stat = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_fleet(devices: int = 50, seconds: float = 60.0, rate: float = 1.0, *, hidden=(32,),
                  min_interval_ms: int = 200, workdir: str | Path | None = None, converge_timeout_s: float = 120.0,
                  seed: int = 0, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the fleet and return the figures (see the module docstring)."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    generate_keypair(work / "signing.key", work / "signing.pub")
    pk = load_public_key(work / "signing.pub")
    _fit_online_head(work / "head", EXT, hidden, seed)
    head0 = Head.from_bytes((work / "head" / HEAD_FILE).read_bytes())
    broker = MosquittoBroker(work / "mosquitto", persistence=False,
                             extra_config="sys_interval 1\nmax_queued_messages 100000\n").start()
    bcfg = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
    ids = [f"dev-{i:03d}" for i in range(devices)]
    svc_cfg = {"broker": bcfg, "fleets": [{"name": FLEET, "initial_head": str(work / "head" / HEAD_FILE),
                                           "head_state": str(work / "head" / HEAD_STATE_FILE), "devices": ids}],
               "state_dir": str(work / "svc"), "signing_key": str(work / "signing.key"),
               "min_interval_ms": min_interval_ms, "delta_dtype": "float16", "mlflow": {"enabled": False},
               "service_id": f"load-trainer-{uuid.uuid4().hex[:6]}"}
    validate_config(TrainerServiceConfig, svc_cfg)
    (work / "trainer.yaml").write_text(json.dumps(svc_cfg))
    (work / "bundle").mkdir(exist_ok=True)
    topics = Topics()
    applied: list[tuple[str, int, float, float]] = []  # device, version, created_at, applied_at
    lock = threading.Lock()
    daemons: list[DeviceDaemon] = []
    holders: list[HeadHolder] = []
    sys_counters: dict[str, float] = {}
    service_status: dict = {}
    watcher = MqttLink(BrokerConfig(**bcfg), f"load-watch-{uuid.uuid4().hex[:6]}", clean_start=True)
    svc, svc_log = start_service(work / "trainer.yaml", work / "service.log")
    sent = 0
    try:
        watcher.start()
        watcher.wait_connected(10)
        watcher.subscribe("$SYS/broker/messages/#", lambda m: sys_counters.__setitem__(
            m.topic.rsplit("/", 2)[-2] + "/" + m.topic.rsplit("/", 1)[-1], float(m.payload or 0)))
        watcher.subscribe("$SYS/broker/publish/messages/#", lambda m: sys_counters.__setitem__(
            "publish/" + m.topic.rsplit("/", 1)[-1], float(m.payload or 0)))
        watcher.subscribe(topics.fleet_service_status(FLEET),
                          lambda m: service_status.update(json.loads(m.payload)))
        progress(f"starting {devices} device daemons")
        for dev in ids:
            cfg = validate_config(DeviceConfig, {
                "device_id": dev, "fleet": FLEET, "bundle": str(work / "bundle"),
                "public_key": str(work / "signing.pub"),
                "camera": {"source": 0, "reopen_on_end": False, "stall_timeout_s": 3600},
                "broker": {**bcfg, "client_id": f"{dev}-{uuid.uuid4().hex[:4]}"},
                "publish": {"status_interval_s": 30, "predictions": False},
                "state_dir": str(work / "devices" / dev)})
            holder = HeadHolder(head0)
            d = DeviceDaemon(cfg, holder, BundleFacts(EXT, head0, 64, "load"), source_factory=lambda: iter(()),
                             update_public_key=pk, backend_name="none")

            def on_applied(res, dev=dev):
                if res.status == "applied":
                    with lock:
                        applied.append((dev, res.version, res.created_at or res.received_at, res.applied_at))

            d.on_applied.append(on_applied)
            d.start()
            daemons.append(d)
            holders.append(holder)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (all(d.link.connected for d in daemons)
                                                   and service_status.get("published_version") is not None
                                                   and all(h.head.version >= service_status["published_version"]
                                                           for h in holders)):
            if svc.poll() is not None:
                raise RuntimeError(f"the update service exited: {(work / 'service.log').read_text()[-2000:]}")
            time.sleep(0.05)
        start_version = service_status.get("published_version", 0)
        progress(f"streaming {rate:g} sample/s from each of {devices} devices for {seconds:g} s")
        rng = np.random.default_rng(seed + 1)
        svc_cpu0, dev_cpu0 = cpu_seconds(svc.pid), time.process_time()
        t0 = time.monotonic()
        period = 1.0 / (rate * devices)
        next_t = t0
        while time.monotonic() - t0 < seconds:
            d = daemons[sent % devices]
            k = int(rng.integers(7))
            e = rng.normal(size=64)
            e[k] += 2.0
            d.link.publish_sample(SampleMessage(device_id=d.config.device_id, fleet=FLEET,
                                                sample_id=f"{d.config.device_id}-{uuid.uuid4().hex[:8]}",
                                                embedding=[float(v) for v in e], extractor_id=EXT,
                                                label=CLASSES[k]))
            sent += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        stream_end = time.monotonic()
        progress("waiting for every device to hold the last published version")
        converged_after = None
        last_seen = -1
        quiet_since = time.monotonic()
        while time.monotonic() - stream_end < converge_timeout_s:
            pub = service_status.get("published_version", -1)
            if pub != last_seen:
                last_seen, quiet_since = pub, time.monotonic()
            if all(h.head.version == pub for h in holders) and time.monotonic() - quiet_since > 2.0:
                converged_after = round(quiet_since - stream_end, 2) if pub >= 0 else None
                break
            time.sleep(0.05)
        svc_cpu = cpu_seconds(svc.pid) - svc_cpu0
        dev_cpu = time.process_time() - dev_cpu0
        wall = time.monotonic() - t0
        versions = [h.head.version for h in holders]
        with lock:
            lat = [(a - c) * 1e3 for _, _, c, a in applied]
            per_device = {}
            for dev, v, _, _ in applied:
                per_device[dev] = per_device.get(dev, 0) + 1
        learned = service_status.get("samples_learned", 0)
        return {
            "devices": devices, "seconds": seconds, "rate_per_device": rate, "min_interval_ms": min_interval_ms,
            "samples_sent": sent, "samples_learned_by_service": learned,
            "dropped_samples": max(0, sent - learned) if learned else None,
            "versions_published": service_status.get("published_version", 0) - start_version,
            "converged": len(set(versions)) == 1 and versions[0] == service_status.get("published_version"),
            "converged_s_after_stream_end": converged_after,
            "final_versions": {"min": min(versions), "max": max(versions),
                               "published": service_status.get("published_version")},
            "updates_applied_per_device": _pct(list(per_device.values())) if per_device else {},
            "update_latency_ms": _pct(lat),
            "service_cpu_s": round(svc_cpu, 1), "service_cpu_share": round(svc_cpu / wall, 2),
            "device_process_cpu_s": round(dev_cpu, 1), "device_process_cpu_share": round(dev_cpu / wall, 2),
            "broker": {k: v for k, v in sorted(sys_counters.items())},
            "cores": os.cpu_count(),
        }
    finally:
        for d in daemons:
            d.request_stop()
        for d in daemons:
            d.stop()
        watcher.stop()
        stop_service(svc, svc_log)
        broker.kill()

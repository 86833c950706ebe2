"""Hand-made hostile updates against a running device daemon over a real Mosquitto, as an attacker who can
publish on the fleet's head topic would send them: what each costs the daemon (time to its rejection, resident
memory above the baseline) and that a valid update still applies afterwards.

The daemon runs in this process (its control thread is the code that parses updates), with a head-only pipeline
(benchmarks.loopbench.HeadHolder): no camera, so the memory figure is the update path's alone.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from infantino.benchmarks.broker import MosquittoBroker
from infantino.benchmarks.loopbench import HeadHolder
from infantino.benchmarks.rss import current_rss_bytes
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract import binfmt, signing
from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.head import Head
from infantino.runtime.mqtt import BrokerConfig, MqttLink

GIB = 1 << 30
FLEET = "attacked"


@dataclass
class AttackRow:
    """One hostile message: what the daemon said, how long until it said it, and the RSS it cost."""

    attack: str
    bytes_sent: int
    reason: Optional[str]
    seconds_to_reject: Optional[float]
    rss_growth_mb: float
    daemon_alive: bool


def _head(version: int, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed + version)
    w = (rng.normal(size=(64, 32)).astype(np.float32), np.zeros(32, np.float32),
         rng.normal(size=(32, 7)).astype(np.float32), np.zeros(7, np.float32))
    return Head(weights=w, version=version, extractor_id="a" * 64)


def _bomb(header: dict, shapes, private_key=None) -> bytes:
    comp = zlib.compressobj(9)
    chunk = bytes(1 << 24)
    payload = b"".join(comp.compress(chunk) for _ in range(GIB // len(chunk))) + comp.flush()
    body = binfmt.pack(b"INFU", dict(header, compression="zlib", payload_len=len(payload), shapes=shapes), payload)
    return body + (signing.sign(private_key, body) if private_key is not None else bytes(64))


def attacks(sk, current: Head) -> list[tuple[str, bytes]]:
    """(name, message) of every attack; `current` is the head the device runs (v1)."""
    good = hu.encode_full(_head(2), sk, fleet=FLEET)
    hdr = binfmt.unpack(b"INFU", good[:-64])[0]
    shape_body = binfmt.pack(b"INFU", dict(hdr, shapes=[[2 ** 32, 2 ** 32]], payload_len=0), b"")
    same = hu.encode_full(current, sk, fleet=FLEET)
    return [
        ("unsigned zlib bomb (1 MB -> 1 GiB), zero signature", _bomb(hdr, [[1 << 14, 1 << 14]])),
        ("signed zlib bomb, shapes claim 1 GiB (compromised key)", _bomb(hdr, [[1 << 14, 1 << 14]], sk)),
        ("signed zlib bomb, shapes claim 64 KB (compromised key)", _bomb(hdr, [[128, 128]], sk)),
        ("shapes [[2**32, 2**32]], empty payload, unsigned", shape_body + bytes(64)),
        ("shapes [[2**32, 2**32]], empty payload, signed", shape_body + signing.sign(sk, shape_body)),
        ("forged copy of the running head (duplicate?)", same[:-64] + bytes(64)),
        ("5 MB of random bytes", np.random.default_rng(0).bytes(5 << 20)),
        ("valid update for another fleet", hu.encode_full(_head(2), sk, fleet="other")),
    ]


def _sample_rss(stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        out.append(current_rss_bytes() or 0)
        time.sleep(0.005)


def measure_attacks(workdir: str | Path | None = None, timeout_s: float = 120.0,
                    progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run every attack against an in-process daemon; returns rows and the valid-update check afterwards."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-attacks-"))
    work.mkdir(parents=True, exist_ok=True)
    signing.generate_keypair(work / "k.key", work / "k.pub")
    sk, pk = signing.load_private_key(work / "k.key"), signing.load_public_key(work / "k.pub")
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    head1 = _head(1)
    (work / "bundle").mkdir(exist_ok=True)
    bcfg = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    cfg = validate_config(DeviceConfig, {
        "device_id": "victim", "fleet": FLEET, "bundle": str(work / "bundle"), "public_key": str(work / "k.pub"),
        "camera": {"source": 0, "reopen_on_end": False, "stall_timeout_s": 3600}, "broker": bcfg,
        "publish": {"status_interval_s": 60}, "state_dir": str(work / "state"),
        "ota": {"max_update_bytes": 4 << 20}})
    holder = HeadHolder(head1)
    daemon = DeviceDaemon(cfg, holder, BundleFacts(head1.extractor_id, head1, 64, "attacks"),
                          source_factory=lambda: iter(()), update_public_key=pk, backend_name="none")
    attacker = MqttLink(BrokerConfig(**bcfg), f"attacker-{uuid.uuid4().hex[:6]}",
                        clean_start=True)
    rows: list[AttackRow] = []
    try:
        daemon.start()
        attacker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (daemon.link.connected and attacker.wait_connected(0.1)):
            time.sleep(0.05)
        time.sleep(0.5)  # the daemon's subscriptions settle
        topic = daemon.link.delta_topic
        for name, blob in attacks(sk, head1):
            progress(name)
            before = sum(daemon.ota.rejections.values()) + daemon.ota.duplicates
            base_rss = current_rss_bytes() or 0
            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_rss, args=(stop, samples), daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            attacker.publish(topic, blob, qos=1)
            seconds = None
            while time.perf_counter() - t0 < timeout_s:
                if sum(daemon.ota.rejections.values()) + daemon.ota.duplicates > before:
                    seconds = time.perf_counter() - t0
                    break
                time.sleep(0.002)
            stop.set()
            sampler.join()
            res = daemon.ota.history[-1] if daemon.ota.history else None
            rows.append(AttackRow(name, len(blob), res.reason if res and seconds is not None else None,
                                  seconds, round(max(0, max(samples, default=base_rss) - base_rss) / 1e6, 1),
                                  all(t.is_alive() for t in daemon._threads
                                      if t.name in ("infantino-process", "infantino-control"))))
        good = hu.encode_full(_head(2), sk, fleet=FLEET)
        attacker.publish(topic, good, qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and holder.head.version != 2:
            time.sleep(0.01)
        return {"rows": [asdict(r) for r in rows], "valid_update_applied_after": holder.head.version == 2,
                "rejections": dict(daemon.ota.rejections)}
    finally:
        attacker.stop()
        daemon.stop()
        broker.kill()

"""A fleet on loopback for rollout tests and benchmarks: an update service and N real device daemons whose
"frames" are embeddings (the head runs on them, so canary devices report real head health without a camera
model), plus labelled samples, good or poisoned, from the same class-shaped distribution.

Classes are separable in the embedding: class k has +`shift` on dimension k. The fleet's head starts from an
OnlineHead fitted on 3,000 such embeddings; a good stream barely changes its predictions on live frames, a
burst of wrong labels ("poison": everything labelled `angry`) does, and the canary gate sees it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

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
from infantino.runtime.pipeline import FaceResult, FrameResult

from .timing import wait_until

log = logging.getLogger(__name__)

EXT = "e" * 64  # the simulated extractor's id
SIM_HEAD_CONFIG = dict(hidden=(32,), online_learning_rate=0.005, distill_weight=0.0, replay_mix=16)


def class_embeddings(rng: np.random.Generator, n: int, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """n embeddings (64-d) and their classes: class k is +shift on dimension k."""
    X = rng.normal(size=(n, 64))
    k = rng.integers(0, len(CLASSES), n)
    X[np.arange(n), k] += shift
    return X.astype(np.float32), k


def fit_sim_head(out_dir: Path, seed: int = 0, n: int = 3000, epochs: int = 30) -> Path:
    """The fleet's starting head (head_state.npz + head.infh in out_dir), fitted on class embeddings."""
    from infantino.trainer.online_head import OnlineHead, OnlineHeadConfig  # heavy: torch-free but sklearn

    X, y = class_embeddings(np.random.default_rng(seed), n + 500)
    oh = OnlineHead(OnlineHeadConfig(seed=seed, **SIM_HEAD_CONFIG), extractor_id=EXT)
    oh.fit(X[:n], y[:n], epochs=epochs)
    oh.calibrate(X[n:], y[n:])  # held out: conformal sets are meaningful from the first version on
    out_dir.mkdir(parents=True, exist_ok=True)
    oh.save_dir(out_dir)
    return out_dir


class EmbeddingPipeline:
    """The part of runtime.Pipeline a daemon uses, on frames that are embeddings: one face per frame."""

    def __init__(self, head: Head):
        self._head = head
        self._lock = threading.Lock()

    @property
    def head(self) -> Head:
        with self._lock:
            return self._head

    def swap_head(self, new: Head) -> Head:
        with self._lock:
            old, self._head = self._head, new
        return old

    def predict_frame(self, emb: np.ndarray) -> FrameResult:
        t0 = time.perf_counter()
        head = self.head
        pred = head.predict(emb[None, :])[0]
        t = {"head": (time.perf_counter() - t0) * 1e3}
        face = FaceResult(box=(0, 0, 64, 64), crop_box=(0, 0, 64, 64), prediction=pred, embedding=emb, timings=t)
        return FrameResult(faces=[face], timings=t, head_version=head.version)


def embedding_frames(fps: float, seed: int, stop: threading.Event) -> Iterator[np.ndarray]:
    """Endless class embeddings at about `fps` (a camera that sees every expression)."""
    rng = np.random.default_rng(seed)
    period = 1.0 / fps
    while not stop.is_set():
        X, _ = class_embeddings(rng, 64)
        for x in X:
            if stop.wait(period):
                return
            yield x


@dataclass
class Applied:
    device: str
    version: int
    sha256: str
    at: float
    ring: Optional[str]


@dataclass
class SimFleet:
    """`devices` daemons (the first `canary` of them in the canary ring) on one broker; call start()/stop()."""

    work: Path
    broker: BrokerConfig
    devices: int = 20
    canary: int = 3
    fleet: str = "nursery"
    fps: float = 25.0
    head_dir: Optional[Path] = None
    seed: int = 0
    daemons: list = field(default_factory=list)
    applied: list = field(default_factory=list)

    def __post_init__(self):
        self.work.mkdir(parents=True, exist_ok=True)
        self.ids = [f"cam-{i:02d}" for i in range(self.devices)]
        self.canary_ids = self.ids[: self.canary]
        self.key, self.pub = self.work / "signing.key", self.work / "signing.pub"
        if not self.key.exists():
            generate_keypair(self.key, self.pub)
        if self.head_dir is None:
            self.head_dir = fit_sim_head(self.work / "head", self.seed)
        self.head0 = Head.from_bytes((self.head_dir / HEAD_FILE).read_bytes())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.topics = Topics()
        self.rng = np.random.default_rng(self.seed + 7)
        self.publisher: MqttLink | None = None

    def service_config(self, **over) -> dict:
        """trainer.yaml for this fleet (rollout with the first `canary` devices unless overridden)."""
        rollout = {"devices": self.canary_ids, "collect_s": 1.0,
                   "gate": {"window_s": 4.0, "timeout_s": 60.0, "min_devices": max(1, self.canary - 1),
                            "min_faces": 60, "max_label_change": 0.12, "max_entropy_increase": 0.06}}
        data = {"broker": self.broker.model_dump(exclude_none=True, mode="json"),
                "fleets": [{"name": self.fleet, "initial_head": str(self.head_dir / HEAD_FILE),
                            "head_state": str(self.head_dir / HEAD_STATE_FILE), "devices": self.ids,
                            "rollout": rollout}],
                "state_dir": str(self.work / "svc"), "signing_key": str(self.key), "min_interval_ms": 200,
                "mlflow": {"enabled": False}, "service_id": f"sim-{uuid.uuid4().hex[:6]}"}
        for k, v in over.items():
            if k == "rollout":
                data["fleets"][0]["rollout"] = v if v is None else {**rollout, **v}
            else:
                data[k] = v
        return data

    def start(self) -> "SimFleet":
        pk = load_public_key(self.pub)
        (self.work / "bundle").mkdir(exist_ok=True)
        bcfg = self.broker.model_dump(exclude_none=True, mode="json")
        for i, dev in enumerate(self.ids):
            canary = dev in self.canary_ids
            cfg = validate_config(DeviceConfig, {
                "device_id": dev, "fleet": self.fleet, "bundle": str(self.work / "bundle"),
                "public_key": str(self.pub), "camera": {"source": 0, "reopen_on_end": False, "stall_timeout_s": 3600},
                "broker": {**bcfg, "client_id": f"{dev}-{uuid.uuid4().hex[:4]}"},
                "publish": {"status_interval_s": 30, "canary_status_interval_s": 0.5, "predictions": False},
                "state_dir": str(self.work / "devices" / dev)})
            pipe = EmbeddingPipeline(self.head0)
            frames = (lambda s=self.seed * 1000 + i: embedding_frames(self.fps, s, self._stop)) if canary \
                else (lambda: iter(()))
            d = DeviceDaemon(cfg, pipe, BundleFacts(EXT, self.head0, 64, "sim"), source_factory=frames,
                             update_public_key=pk, backend_name="sim")

            def on_applied(res, d=d):
                if res.status in ("applied", "rolled_back"):
                    with self._lock:
                        self.applied.append(Applied(d.config.device_id, res.head_version, d.pipeline.head.sha256,
                                                    res.applied_at or time.time(), d.link.ring))

            d.on_applied.append(on_applied)
            d.start()
            threading.Thread(target=d.supervise, daemon=True, name=f"sim-{dev}").start()
            self.daemons.append(d)
        self.publisher = MqttLink(self.broker, f"sim-samples-{uuid.uuid4().hex[:6]}", clean_start=True).start()
        return self

    def wait_connected(self, timeout: float = 30.0) -> bool:
        return wait_until(lambda: all(d.link is not None and d.link.connected for d in self.daemons)
                          and self.publisher.connected.is_set(), timeout)

    def rings(self) -> dict[str, Optional[str]]:
        return {d.config.device_id: d.link.ring for d in self.daemons}

    def send(self, n: int, poison: bool = False, spread_s: float = 0.5) -> list[str]:
        """n labelled samples from the devices in turn (poison: every one labelled `angry`); returns their ids."""
        X, k = class_embeddings(self.rng, n)
        ids = []
        for i in range(n):
            dev = self.ids[i % len(self.ids)]
            sid = f"{dev}-{uuid.uuid4().hex[:10]}"
            msg = SampleMessage(device_id=dev, fleet=self.fleet, sample_id=sid, embedding=[float(v) for v in X[i]],
                                extractor_id=EXT, label="angry" if poison else CLASSES[int(k[i])])
            self.publisher.publish(self.topics.samples(dev), msg.model_dump_json(exclude_none=True), qos=1)
            ids.append(sid)
            if spread_s:
                time.sleep(spread_s / n)
        return ids

    def versions(self) -> dict[str, int]:
        return {d.config.device_id: d.pipeline.head.version for d in self.daemons}

    def ever_ran(self, version: int) -> set[str]:
        """Devices that ever applied `version`."""
        with self._lock:
            return {a.device for a in self.applied if a.version == version}

    def stop(self) -> None:
        self._stop.set()
        for d in self.daemons:
            d.request_stop()
        for d in self.daemons:
            d.stop()
        if self.publisher is not None:
            self.publisher.stop()

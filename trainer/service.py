"""The cloud side of online learning: labelled samples in (MQTT), signed head updates out, versions in MLflow.

UpdateService subscribes to every device's samples topic (QoS1, persistent session with an explicit client id,
clean_start=False), drops repeats by sample_id, calls OnlineHead.learn_one per sample, and at most every
`min_interval_ms` publishes one signed delta covering all samples since the last one, plus the retained full
head. Crash safety, without putting a full state save on the update's critical path:
- before a version is published, its number and sha256 are written to a small durable record
  (`published.rec`, one fdatasync); a restarted service numbers its next update above it, so no version number is ever
  published twice with different weights;
- the full state (online head, published head, seen sample ids) is checkpointed every `checkpoint_every`
  samples / `checkpoint_s` seconds and at stop; samples are acknowledged to the broker (manual PUBACK) only
  after the checkpoint that includes them, so a crash makes the broker redeliver them rather than lose them;
- after every (re)connect the broker's retained full head is checked: the same as ours -> nothing to do;
  the version in the durable record (published before a crash) -> adopted as the base of the next delta;
  newer (state restored from an older backup) -> adopted; missing or older -> ours is published again, or,
  when this service no longer has the weights devices hold, a new full head with the next version.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from infantino.runtime.configfile import (ConfigError, ExistingFile, ExistingPath, WritableDir, load_yaml_config,
                                          short_error)
from infantino.runtime.contract.errors import HeadError, InfantinoError, UpdateRejected
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.head_update import apply_update, encode_delta, encode_full
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.signing import load_private_key, load_public_key
from infantino.runtime.face import FaceOptions
from infantino.runtime.mqtt import BrokerConfig, Message, MqttLink
from infantino.runtime.contract.topics import Topics
from infantino.runtime.pipeline import Pipeline

from .online_head import OnlineHead
from .realface_guard import GuardPolicy, embed_heldout, head_agreement, pretrained_baseline
from .tracking import configure_tracking, ensure_experiment
from .web.config import ServiceWebConfig

log = logging.getLogger(__name__)

STATE_FILE = "service.json"
INTENT_FILE = "published.rec"
RETAINED_SYNC_S = 1.0  # after a connect, wait this long for the broker's retained head before re-publishing ours


# ---- configuration -------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetConfig(_Strict):
    """One fleet: its bundle (extractor id + the head devices start with) and the online head to continue."""

    name: str
    bundle: Optional[ExistingPath] = Field(None, description="the bundle the fleet's devices run (directory or "
                                           ".tar): gives the extractor id and the head devices start with")
    initial_head: Optional[ExistingFile] = Field(None, description="instead of bundle: the bundle's head.infh "
                                                 "(it names its extractor id)")
    head_state: ExistingPath = Field(..., description="OnlineHead state (head_state.npz or its directory) to start from")
    migrate_legacy_state: bool = Field(False, description="head_state is a legacy head_state.pkl you trust (a "
                                       "pickle runs code when loaded): read it once, write head_state.npz beside it")
    devices: Optional[list[str]] = Field(None, description="the fleet's device ids: samples from any other device "
                                         "are refused (required unless allow_any_device)")
    allow_any_device: bool = Field(False, description="accept samples from any device that names this fleet "
                                   "(only for a broker whose ACL already restricts who may publish samples)")
    real_face_guard: bool = Field(True, description="hold back head versions that agree less with the FER-2013 "
                                  "teacher on held-out real faces than the guard allows (needs `bundle`)")
    allow_real_face_regression: bool = Field(False, description="publish such versions anyway (logged)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bundle is None) == (self.initial_head is None):
            raise ValueError("give either bundle (the fleet's bundle) or initial_head (its head.infh), exactly one")
        if self.devices is None and not self.allow_any_device:
            raise ValueError(f"fleet {self.name}: list its devices (devices: [cam-01, ...]) or set "
                             "allow_any_device: true (any device could then train this fleet's head)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", v):
            raise ValueError(f"fleet name must be letters, digits, '.', '_' or '-' (an MQTT topic level), got {v!r}")
        return v


class MlflowConfig(_Strict):
    enabled: bool = True
    tracking_uri: Optional[str] = Field(None, description="default: trainer.tracking's (sqlite:///mlflow.db)")
    experiment: str = "infantino-online"
    flush_s: float = Field(5.0, gt=0, description="log head versions in batches at most this often")


class TrainerServiceConfig(_Strict):
    """`infantino-train serve` settings (trainer.yaml); relative paths resolve against the file's folder."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    topic_prefix: str = "infantino"
    service_id: str = Field("infantino-trainer", description="MQTT client id: keep it stable (persistent session)")
    fleets: list[FleetConfig] = Field(..., min_length=1)
    state_dir: WritableDir = Field(..., description="service state, one sub-folder per fleet")
    signing_key: ExistingFile = Field(..., description="Ed25519 private key that signs head updates")
    public_key: Optional[ExistingFile] = Field(None, description="verifies bundles (default: from signing_key)")
    min_interval_ms: int = Field(200, ge=0, le=3_600_000, description="at most one update per fleet this often")
    delta_dtype: Literal["float32", "float16"] = "float32"
    compression: Literal["none", "zlib"] = "none"
    checkpoint_every: int = Field(16, ge=1, le=10000, description="checkpoint + acknowledge at least every N samples")
    checkpoint_s: float = Field(2.0, gt=0, le=3600, description="... and at least this often (seconds)")
    dedupe_window: int = Field(20000, ge=100, description="sample ids remembered to drop redeliveries")
    max_sample_bytes: int = Field(64 << 10, ge=1024, le=16 << 20, description="larger sample messages are refused "
                                  "before they are parsed")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    web: ServiceWebConfig = Field(default_factory=ServiceWebConfig)

    @model_validator(mode="after")
    def _unique(self):
        names = [f.name for f in self.fleets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"fleet names must be unique, repeated: {', '.join(dup)}")
        if self.broker.client_id is None:
            self.broker.client_id = self.service_id
        return self


def load_service_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainerServiceConfig:
    return load_yaml_config(TrainerServiceConfig, path, overrides)


# ---- per-fleet state ---------------------------------------------------------------------------------------
class VersionRecord:
    """The last published version, durable before each publish at the cost of one fdatasync (no rename).

    Two 512-byte slots in one preallocated file, written alternately in place: each slot holds a JSON record
    and its CRC32. A write torn by a crash leaves that slot invalid and the other one (the previous record)
    intact; reading picks the valid slot with the higher sequence number.
    """

    SLOT = 512

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self.seq, self.record = self._read()

    def _read(self) -> tuple[int, dict]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0, {}
        best = (0, {})
        for i in range(2):
            chunk = raw[i * self.SLOT:(i + 1) * self.SLOT]
            try:
                crc, body = chunk.rstrip(b"\0 ").split(b" ", 1)
                if int(crc, 16) != zlib.crc32(body):
                    continue
                rec = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and int(rec.get("seq", 0)) > best[0]:
                best = (int(rec["seq"]), rec)
        return best

    def write(self, record: dict) -> None:
        seq = self.seq + 1
        body = json.dumps({**record, "seq": seq}, sort_keys=True).encode()
        line = f"{zlib.crc32(body):08x} ".encode() + body
        if len(line) > self.SLOT:
            raise ValueError("version record too large")
        if self._fd is None:
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if new or os.fstat(self._fd).st_size < 2 * self.SLOT:
                os.pwrite(self._fd, b"\0" * (2 * self.SLOT), 0)
                os.fsync(self._fd)
                fsync_dir(self.path.parent)
        os.pwrite(self._fd, line.ljust(self.SLOT, b"\0"), (seq % 2) * self.SLOT)
        os.fdatasync(self._fd)
        self.seq, self.record = seq, {**record, "seq": seq}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FleetState:
    """A fleet's online head, the head devices hold (last published) and recently seen sample ids, on disk.

    Checkpoint = write online.<gen>.npz and published.<gen>.infh, then service.json naming them (atomic rename):
    a crash leaves the previous checkpoint or the new one, never a mix. A checkpoint of an older version names
    online.<gen>.pkl (a pickle): the service wrote it itself, so it is migrated on open (with a warning) and a new
    checkpoint is written at once. `floor` is the highest version ever
    published (durable in published.rec, written before each publish); when it is above the checkpoint's
    published head, the weights devices hold are unknown here until the broker's retained head is adopted.
    """

    def __init__(self, state_dir: Path, online, published: Head, seen: list[str], gen: int, learned: int,
                 dedupe_window: int, floor: int | None = None, floor_sha256: str | None = None):
        self.dir = state_dir
        self.online = online
        self.published = published
        self.seen: OrderedDict[str, None] = OrderedDict((s, None) for s in seen)
        self.gen = gen
        self.learned = learned
        self.dedupe_window = dedupe_window
        self.record: VersionRecord | None = None
        self.floor = published.version if floor is None else max(floor, published.version)
        self.floor_sha256 = floor_sha256 if self.floor > published.version else published.sha256

    @property
    def knows_device_head(self) -> bool:
        """True when the weights of the latest published version are here (deltas are possible)."""
        return self.published.version == self.floor and self.published.sha256 == self.floor_sha256

    @classmethod
    def open(cls, state_dir: Path, fresh: Callable[[], tuple[object, Head]], dedupe_window: int,
             read_only: bool = False) -> "FleetState":
        """The fleet's saved state, or a fresh one from the configured head (written at once unless read_only)."""
        if not read_only:
            state_dir.mkdir(parents=True, exist_ok=True)
        meta_path = state_dir / STATE_FILE
        record = VersionRecord(state_dir / INTENT_FILE)
        intent = record.record
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                online_file = state_dir / Path(str(meta["online_file"])).name
                legacy = online_file.suffix == ".pkl"
                if legacy:
                    log.warning("fleet state %s: checkpoint %s is a legacy pickle written by an older version of "
                                "this service; migrating it to the npz state format", state_dir, online_file.name)
                online = OnlineHead.load(online_file, trust_legacy_pickle=legacy)
                published = Head.from_bytes((state_dir / meta["published_file"]).read_bytes())
            except (KeyError, ValueError, OSError, HeadError, InfantinoError) as e:
                raise InfantinoError(f"service state in {state_dir} is unreadable ({e}); restore it from a backup "
                                     f"or move it away to start from the configured head_state") from None
            st = cls(state_dir, online, published, meta.get("seen", []), int(meta["gen"]),
                     int(meta.get("learned", 0)), dedupe_window, intent.get("version"), intent.get("sha256"))
            st.record = record
            if not read_only:
                if legacy:
                    st.commit()  # service.json then names the npz checkpoint; the pickle is removed as stale
                st._remove_stale_files()
            log.info("fleet state %s: checkpoint at published head v%d, last published version v%d "
                     "(%d samples learned)", state_dir, published.version, st.floor, st.learned)
            return st
        online, published = fresh()
        st = cls(state_dir, online, published, [], 0, 0, dedupe_window, intent.get("version"), intent.get("sha256"))
        st.record = record
        if not read_only:
            st.commit()
        return st

    def seen_before(self, sample_id: str) -> bool:
        return sample_id in self.seen

    def remember(self, sample_id: str) -> None:
        self.seen[sample_id] = None
        while len(self.seen) > self.dedupe_window:
            self.seen.popitem(last=False)

    def record_published(self, head: Head, base_version: int | None) -> None:
        """Durably note that `head` is (about to be) published: the version floor for every later update."""
        if self.record is None:
            self.record = VersionRecord(self.dir / INTENT_FILE)
        self.record.write({"version": head.version, "sha256": head.sha256, "base_version": base_version,
                           "time": round(time.time(), 3)})
        self.published, self.floor, self.floor_sha256 = head, head.version, head.sha256

    def commit(self) -> None:
        """Checkpoint everything (online head state, published head, seen ids, counters)."""
        gen = self.gen + 1
        online_file, published_file = f"online.{gen}.npz", f"published.{gen}.infh"
        self.online.save(self.dir / online_file)
        atomic_write_bytes(self.dir / published_file, self.published.to_bytes())
        meta = {"gen": gen, "online_file": online_file, "published_file": published_file,
                "published_version": self.published.version, "published_sha256": self.published.sha256,
                "learned": self.learned, "seen": list(self.seen), "saved_at": time.time()}
        atomic_write_text(self.dir / STATE_FILE, json.dumps(meta))
        self.gen = gen
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        keep = {f"online.{self.gen}.npz", f"published.{self.gen}.infh"}
        stale = [p for pattern in ("online.*.npz", "online.*.pkl", "published.*.infh") for p in self.dir.glob(pattern)]
        for p in stale:
            if p.name not in keep:
                try:
                    p.unlink()
                except OSError:
                    pass


@dataclass
class PublishedUpdate:
    """One published version: what went out and when (for tests, benchmarks and MLflow)."""

    fleet: str
    version: int
    base_version: int
    sha256: str
    delta_bytes: int
    full_bytes: int
    samples: int
    learned_total: int
    published_at: float
    sample_ids: list[str] = field(default_factory=list)
    first_received_at: Optional[float] = None  # when the oldest sample of this update reached the service
    realface_agreement: Optional[float] = None  # the real-face guard's figures of this version
    realface_agreement_confident: Optional[float] = None
    held_back: bool = False                     # True: failed the guard, not published (version not consumed)


class FleetWorker:
    """Learning and publishing for one fleet."""

    def __init__(self, cfg: FleetConfig, svc: "TrainerServiceConfig", signing_key, public_key, topics: Topics,
                 read_only: bool = False):
        self.cfg = cfg
        self.name = cfg.name
        self.svc = svc
        self.signing_key = signing_key
        self.public_key = public_key
        self.head_topic = topics.fleet_head(cfg.name)
        self.delta_topic = topics.fleet_delta(cfg.name)
        self.guard: Optional[FleetGuard] = None
        if cfg.bundle is not None:
            bundle = load_bundle(cfg.bundle, public_key=public_key)
            self.extractor_id, bundle_head = bundle.extractor_id, bundle.head
            if cfg.real_face_guard:
                self.guard = FleetGuard(bundle, cfg.allow_real_face_regression)
        else:
            if cfg.real_face_guard:
                log.warning("fleet %s: no bundle, so no real-face guard (it embeds real faces with the bundle's "
                            "extractor); set `bundle` or real_face_guard: false", cfg.name)
            try:
                bundle_head = Head.from_bytes(Path(cfg.initial_head).read_bytes())
            except HeadError as e:
                raise ConfigError(f"fleet {cfg.name}: initial_head {cfg.initial_head} is not a head file: {e}") from None
            self.extractor_id = bundle_head.extractor_id

        def fresh():
            online = OnlineHead.load(cfg.head_state, trust_legacy_pickle=cfg.migrate_legacy_state)
            if online.extractor_id and online.extractor_id != self.extractor_id:
                raise ConfigError(f"fleet {cfg.name}: head_state was trained on extractor {online.extractor_id[:12]}…, "
                                  f"the bundle runs {self.extractor_id[:12]}…")
            online.extractor_id = self.extractor_id
            head = online.to_head()
            if head.shapes != bundle_head.shapes or tuple(head.classes) != tuple(bundle_head.classes):
                raise ConfigError(f"fleet {cfg.name}: head_state's head {head.shapes} does not match the bundle's "
                                  f"head {bundle_head.shapes} (shapes or classes)")
            return online, bundle_head

        self.state = FleetState.open(Path(svc.state_dir) / cfg.name, fresh, svc.dedupe_window, read_only)
        if self.state.published.extractor_id != self.extractor_id:
            raise ConfigError(f"fleet {cfg.name}: the saved state belongs to another extractor; "
                              f"move {self.state.dir} away to start over with this bundle")
        self.full_bytes = encode_full(self.state.published, signing_key, fleet=cfg.name, compression=svc.compression)
        self.dirty_samples: list[str] = []
        self.first_received_at: float | None = None
        self.unacked: list[Message] = []
        self.last_publish = 0.0
        self.last_checkpoint = time.monotonic()
        self.force_full = False
        self.synced = False
        self.sync_deadline: float | None = None

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_samples) or self.force_full

    def learn(self, sample: SampleMessage) -> str:
        weight = float(sample.confidence) if sample.confidence is not None and sample.confidence > 0 else 1.0
        outcome = self.state.online.learn_one(np.asarray(sample.embedding, dtype=np.float32), label=sample.label,
                                              labels=sample.labels, soft_label=sample.soft_label, weight=weight)
        self.state.remember(sample.sample_id)
        self.state.learned += 1
        if outcome != "dropped":
            self.dirty_samples.append(sample.sample_id)
        return outcome

    def make_update(self) -> tuple[bytes | None, bytes, Head] | None:
        """(delta or None, full, result): the next version, above every version ever published; None if the
        online head equals the published one. Without the weights devices hold, only a full head is possible."""
        st = self.state
        new = st.online.to_head()
        pub = st.published
        if (not self.force_full and st.knows_device_head and new.sha256 == pub.sha256
                and new.conformal_qhat == pub.conformal_qhat):
            return None
        new = new.replace(version=st.floor + 1, extractor_id=self.extractor_id)
        delta = None
        if st.knows_device_head and new.shapes == pub.shapes:
            delta, new = encode_delta(pub, new, self.signing_key, fleet=self.name, dtype=self.svc.delta_dtype,
                                      compression=self.svc.compression)
        full = encode_full(new, self.signing_key, fleet=self.name, compression=self.svc.compression)
        return delta, full, new

    def check_retained(self, payload: bytes) -> str:
        """Reconcile with the broker's retained head: 'same', 'adopted', 'republish' (ours) or 'new_full'."""
        st = self.state
        try:
            head = apply_update(None, payload, self.public_key, self.extractor_id, fleet=self.name)
        except UpdateRejected as e:
            log.warning("fleet %s: the retained head on the broker is unusable (%s)", self.name, e)
            head = None
        if head is not None and head.version == st.floor and head.sha256 == st.floor_sha256:
            if st.knows_device_head:
                return "same"
            log.info("fleet %s: adopting the retained head v%d (published before a restart) as the delta base",
                     self.name, head.version)
            st.published, self.full_bytes = head, payload
            return "adopted"
        if head is not None and head.version > st.floor:
            log.warning("fleet %s: the broker holds head v%d but this service had published up to v%d (state "
                        "restored from an older copy?): adopting v%d as the base of the next update", self.name,
                        head.version, st.floor, head.version)
            st.record_published(head, None)
            self.full_bytes = payload
            return "adopted"
        return self.retained_missing()

    def retained_missing(self) -> str:
        """The broker lacks our latest head: send it again, or a new version if its weights are not here."""
        if self.state.knows_device_head:
            return "republish"
        log.warning("fleet %s: the broker lost head v%d and this service has no copy of it; publishing a new "
                    "full head v%d", self.name, self.state.floor, self.state.floor + 1)
        self.force_full = True
        return "new_full"


class FleetGuard:
    """The real-face guard of one fleet: held-out real faces embedded once by the bundle's extractor, and every
    candidate head version scored on them before it may be published (trainer.realface_guard)."""

    def __init__(self, bundle, allow_regression: bool = False):
        with Pipeline(bundle, face=FaceOptions(detector="full_frame")) as pipe:  # the faces are crops already
            self.embeddings = embed_heldout(pipe.embed)
        rf = bundle.manifest.real_faces
        self.baseline = rf.baseline if rf is not None and rf.baseline is not None else pretrained_baseline()
        self.allow_regression = allow_regression
        self.held_back = 0
        self.last: dict | None = None

    def judge(self, head: Head) -> tuple[bool, dict]:
        """(may publish, figures) for a candidate head; figures include the failed thresholds."""
        a = head_agreement(self.embeddings, head, baseline=self.baseline)
        problems = GuardPolicy().problems(a)
        self.last = {"agreement": a.all, "agreement_confident": a.confident, "baseline": self.baseline,
                     "problems": problems}
        return (not problems) or self.allow_regression, self.last


# ---- MLflow -----------------------------------------------------------------------------------------------
class VersionTracker:
    """Logs published head versions to MLflow in batches from its own thread (MLflow never blocks learning)."""

    def __init__(self, cfg: MlflowConfig, params: dict):
        self.cfg = cfg
        self.params = params
        self.q: queue.Queue = queue.Queue()
        self.runs: dict[str, str] = {}
        self.logged = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="infantino-mlflow", daemon=True)
        self._client = None

    def start(self) -> "VersionTracker":
        self._thread.start()
        return self

    def record(self, upd: PublishedUpdate) -> None:
        self.q.put(upd)

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _connect(self):
        """Tracking per trainer.tracking (local SQLite + artifact folder by default, or the configured URI)."""
        from mlflow.tracking import MlflowClient  # heavy: mlflow, ~1.3 s to import

        uri = configure_tracking(self.cfg.tracking_uri)
        self.experiment_id = ensure_experiment(self.cfg.experiment)
        return MlflowClient(tracking_uri=uri)

    def _run_for(self, fleet: str) -> str:
        if fleet not in self.runs:
            run = self._client.create_run(self.experiment_id, run_name=f"online-{fleet}-{time.strftime('%Y%m%d-%H%M%S')}",
                                          tags={"infantino.fleet": fleet, "infantino.kind": "online-service"})
            from mlflow.entities import Param  # heavy: mlflow, ~1.3 s to import

            self._client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in
                                                            {**self.params, "fleet": fleet}.items()])
            self.runs[fleet] = run.info.run_id
        return self.runs[fleet]

    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.cfg.flush_s)
            batch: list[PublishedUpdate] = []
            while True:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if batch:
                try:
                    self._flush(batch)
                except Exception as e:  # tracking trouble must not stop the service
                    self.error = f"{type(e).__name__}: {e}"
                    log.warning("MLflow logging failed (%s); %d versions not logged", self.error, len(batch))
            if stopping:
                return

    def _flush(self, batch: list[PublishedUpdate]) -> None:
        from mlflow.entities import Metric, RunTag  # heavy: mlflow, ~1.3 s to import

        if self._client is None:
            self._client = self._connect()
        by_fleet: dict[str, list[PublishedUpdate]] = {}
        for u in batch:
            by_fleet.setdefault(u.fleet, []).append(u)
        for fleet, ups in by_fleet.items():
            run_id = self._run_for(fleet)
            metrics = []
            for u in ups:
                ts = int(u.published_at * 1000)
                if u.realface_agreement is not None:
                    pre = "held_back_" if u.held_back else ""
                    metrics += [Metric(f"{pre}realface_agreement", u.realface_agreement, ts, u.version),
                                Metric(f"{pre}realface_agreement_confident", u.realface_agreement_confident, ts,
                                       u.version)]
                if u.held_back:
                    metrics.append(Metric("held_back_versions", 1, ts, u.version))
                    continue
                metrics += [Metric("head_version", u.version, ts, u.version),
                            Metric("samples_learned", u.learned_total, ts, u.version),
                            Metric("samples_in_update", u.samples, ts, u.version),
                            Metric("delta_bytes", u.delta_bytes, ts, u.version),
                            Metric("full_bytes", u.full_bytes, ts, u.version)]
            published = [u for u in ups if not u.held_back]
            last = published[-1] if published else None
            for i in range(0, len(metrics), 900):  # MLflow accepts up to 1000 metrics per batch
                self._client.log_batch(run_id, metrics=metrics[i:i + 900])
            if last is not None:
                self._client.log_batch(run_id, tags=[RunTag("head_version", str(last.version)),
                                                     RunTag("head_sha256", last.sha256)])
            self.logged += len(ups)


# ---- the service --------------------------------------------------------------------------------------------
class UpdateService:
    """Samples in, signed head updates out. `start()` returns at once; `run()` blocks until `request_stop()`."""

    def __init__(self, config: TrainerServiceConfig, read_only: bool = False):
        """read_only: load and check everything (keys, bundles, head states, saved fleet state) writing nothing."""
        self.config = config
        self.topics = Topics(config.topic_prefix)
        self.signing_key = load_private_key(config.signing_key)
        self.public_key = (load_public_key(config.public_key) if config.public_key
                           else self.signing_key.public_key())
        self.fleets = {f.name: FleetWorker(f, config, self.signing_key, self.public_key, self.topics, read_only)
                       for f in config.fleets}
        self.by_head_topic = {w.head_topic: w for w in self.fleets.values()}
        self.inbox: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.published: collections.deque[PublishedUpdate] = collections.deque(maxlen=10000)
        self.held_back: collections.deque[PublishedUpdate] = collections.deque(maxlen=10000)
        self.counters = {"received": 0, "learned": 0, "duplicates": 0, "invalid": 0, "dropped": 0}
        self.on_published: list[Callable[[PublishedUpdate], None]] = []
        self.link = MqttLink(config.broker, client_id=config.broker.client_id or config.service_id,
                             clean_start=False, manual_ack=True)
        self.link.subscribe(self.topics.all_samples(), lambda m: self.inbox.put(("sample", m)), qos=1)
        for topic in self.by_head_topic:
            self.link.subscribe(topic, self._on_head_message, qos=1)
        self.link.add_on_connect(lambda sp: self.inbox.put(("connected", None)))
        self.device_status: dict[str, dict] = {}  # device id -> its last retained status (web page, metrics)
        self._device_fleet = {d: f.name for f in reversed(config.fleets) for d in (f.devices or ())}
        self.metrics = self.web = None
        if config.web.enabled and not read_only:
            self._start_web_side()
        self.tracker = None
        if config.mlflow.enabled:
            self.tracker = VersionTracker(config.mlflow, {
                "min_interval_ms": config.min_interval_ms, "delta_dtype": config.delta_dtype,
                "compression": config.compression, "service_id": config.service_id})
        self._thread = threading.Thread(target=self._loop, name="infantino-update-service", daemon=True)

    # ---- web page, API and metrics ------------------------------------------------------------------
    def _start_web_side(self) -> None:
        """Metrics, device statuses (their retained status topics) and the web server object (started later)."""
        from infantino.runtime.webserver import WebServer  # optional: fastapi/uvicorn only when web.enabled

        from .web.app import create_app
        from .web.metrics import ServiceMetrics

        self.metrics = ServiceMetrics()
        self.link.subscribe(self.topics.status("+"), self._on_status, qos=0)
        cfg = self.config.web
        self.web = WebServer(create_app(self, cfg), cfg.bind, cfg.port, name="infantino-service-web")

    def _on_status(self, msg: Message) -> None:
        """A device's retained status (network thread: parse, keep the newest, bounded)."""
        try:
            device = self.topics.device_from_topic(msg.topic)
            status = json.loads(msg.payload) if len(msg.payload) <= 64 << 10 else None
        except ValueError:
            return
        if isinstance(status, dict) and (device in self.device_status or len(self.device_status) < 100_000):
            status["received_at"] = time.time()
            self.device_status[device] = status

    def fleet_of(self, device: str) -> Optional[str]:
        """The fleet a device is listed in (None for devices only an allow_any_device fleet accepts)."""
        return self._device_fleet.get(device)

    def fleet_report(self) -> dict:
        """Every fleet: published head, samples learned, head history (last 50 versions, held back ones
        included) with real-face agreement, and its devices from their retained statuses."""
        now = time.time()
        by_fleet: dict[Optional[str], list[dict]] = {}
        for dev, st in sorted(self.device_status.items()):
            by_fleet.setdefault(self.fleet_of(dev), []).append({
                "device_id": dev, "online": st.get("state") == "online", "head_version": st.get("head_version"),
                "fps": st.get("fps"), "camera": st.get("camera"), "rejections": st.get("rejections") or {},
                "last_update": (st.get("last_update") or {}).get("message"),
                "age_s": round(now - float(st.get("timestamp") or st["received_at"]), 1)})
        history = sorted(list(self.published) + list(self.held_back), key=lambda u: u.published_at)
        tracker = self.tracker
        fleets = []
        for name, w in self.fleets.items():
            hist = [{"version": u.version, "held_back": u.held_back, "samples": u.samples,
                     "learned_total": u.learned_total, "realface_agreement": u.realface_agreement,
                     "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(u.published_at))}
                    for u in history if u.fleet == name][-50:][::-1]
            fleets.append({"fleet": name, "published_version": w.state.published.version,
                           "samples_learned": w.state.learned, "held_back": w.guard.held_back if w.guard else 0,
                           "history": hist, "devices": by_fleet.get(name, []),
                           "mlflow_run_id": tracker.runs.get(name) if tracker else None,
                           "mlflow_experiment_id": getattr(tracker, "experiment_id", None) if tracker else None})
        if by_fleet.get(None):
            fleets.append({"fleet": "(any-device fleets)", "published_version": None, "samples_learned": None,
                           "held_back": 0, "history": [], "devices": by_fleet[None], "mlflow_run_id": None,
                           "mlflow_experiment_id": None})
        return {"fleets": fleets, "generated_at": now}

    def metrics_text(self) -> bytes:
        """Prometheus text; device gauges computed from the statuses at scrape time."""
        m = self.metrics
        m.devices.clear()
        for dev, st in self.device_status.items():
            m.devices.labels(self.fleet_of(dev) or "", "online" if st.get("state") == "online" else "offline").inc()
        for name, w in self.fleets.items():
            m.version.labels(name).set(w.state.published.version)
        return m.text()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "UpdateService":
        if self.web is not None:
            self.web.start()
        if self.tracker is not None:
            self.tracker.start()
        self._thread.start()
        self.link.start()
        for w in self.fleets.values():
            log.info("fleet %s: published head v%d, extractor %s…, samples learned so far %d", w.name,
                     w.state.published.version, w.extractor_id[:12], w.state.learned)
        return self

    @property
    def ready(self) -> bool:
        """Connected, and every fleet's retained head checked (updates flow from now on)."""
        return self.link.connected.is_set() and all(w.synced for w in self.fleets.values())

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        """Publish what was learned, persist, acknowledge, disconnect, flush MLflow."""
        self.stop_event.set()
        self._thread.join(timeout=30)
        self.link.stop(timeout=3.0)
        if self.web is not None:
            self.web.stop()
        for w in self.fleets.values():
            if w.state.record is not None:
                w.state.record.close()
        if self.tracker is not None:
            self.tracker.stop()
        log.info("update service stopped: %s", self.counters)

    # ---- network-thread handlers ---------------------------------------------------------------------
    def _on_head_message(self, msg: Message) -> None:
        self.link.ack(msg)
        if msg.retain:
            self.inbox.put(("retained", msg))

    # ---- worker ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            stopping = self.stop_event.is_set()
            timeout = 0.0 if stopping else self._next_wake()
            batch = []
            try:
                batch.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
                while len(batch) < 256:
                    batch.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            for kind, msg in batch:
                try:
                    if kind == "sample":
                        self._handle_sample(msg)
                    elif kind == "retained":
                        self._handle_retained(msg)
                    elif kind == "connected":
                        for w in self.fleets.values():
                            w.synced, w.sync_deadline = False, time.monotonic() + RETAINED_SYNC_S
                except Exception:  # one bad message must not stop the service
                    log.exception("update service: handling a %s message failed (continuing)", kind)
            try:
                self._after_batch(final=stopping and not batch)
            except Exception:  # e.g. a full disk: nothing is acknowledged, so nothing is lost; retried
                log.exception("update service: publishing/checkpointing failed (will retry)")
                time.sleep(0.5)
            if stopping and not batch:
                return

    def _next_wake(self) -> float:
        now = time.monotonic()
        wake = 0.5
        for w in self.fleets.values():
            if w.sync_deadline is not None:
                wake = min(wake, max(0.001, w.sync_deadline - now))
            if w.dirty:
                due = w.last_publish + self.config.min_interval_ms / 1000.0
                wake = min(wake, max(0.001, due - now))
            if w.unacked:
                wake = min(wake, max(0.001, w.last_checkpoint + self.config.checkpoint_s - now))
        return wake

    def _handle_sample(self, msg: Message) -> None:
        self.counters["received"] += 1
        w = None
        try:
            if len(msg.payload) > self.config.max_sample_bytes:
                raise ValueError(f"sample of {len(msg.payload)} bytes exceeds the {self.config.max_sample_bytes}-byte "
                                 "limit")
            sample = SampleMessage.model_validate_json(msg.payload)
            device = self.topics.device_from_topic(msg.topic)
            if sample.device_id != device:
                raise ValueError(f"device_id {sample.device_id!r} does not match the topic's device {device!r}")
            w = self.fleets.get(sample.fleet)
            if w is None:
                raise ValueError(f"unknown fleet {sample.fleet!r} (this service serves {', '.join(self.fleets)})")
            if not w.cfg.allow_any_device and device not in (w.cfg.devices or ()):
                raise ValueError(f"device {device!r} is not listed for fleet {w.name}")
            if sample.extractor_id != w.extractor_id:
                raise ValueError(f"sample embedding comes from extractor {sample.extractor_id[:12]}…, fleet "
                                 f"{w.name} runs {w.extractor_id[:12]}…")
        except ValueError as e:
            self._count("invalid", w.name if w is not None else "")
            log.warning("sample on %s refused: %s", msg.topic, short_error(e))
            self.link.ack(msg)  # nothing to learn: never redeliver
            return
        w.unacked.append(msg)
        if w.state.seen_before(sample.sample_id):
            self._count("duplicates", w.name)
            log.debug("sample %s seen before (redelivery); dropped", sample.sample_id)
            return
        t0 = time.perf_counter()
        try:
            outcome = w.learn(sample)
            if w.first_received_at is None:
                w.first_received_at = msg.received_at
        except (ValueError, InfantinoError) as e:
            self._count("invalid", w.name)
            log.warning("sample %s from %s not learnable: %s", sample.sample_id, device, e)
            w.state.remember(sample.sample_id)
            return
        except Exception:  # a bug, not bad input: say so loudly, and do not let it block the stream
            self._count("invalid", w.name)
            log.exception("learning sample %s from %s failed", sample.sample_id, device)
            w.state.remember(sample.sample_id)
            return
        if self.metrics is not None:
            self.metrics.learn_seconds.labels(w.name).observe(time.perf_counter() - t0)
        self._count("learned" if outcome != "dropped" else "dropped", w.name)

    def _count(self, outcome: str, fleet: str) -> None:
        """One sample's outcome in the counters (and the metrics, with its fleet when known)."""
        self.counters[outcome] += 1
        if self.metrics is not None:
            self.metrics.samples.labels(fleet, outcome).inc()

    def _handle_retained(self, msg: Message) -> None:
        w = self.by_head_topic.get(msg.topic)
        if w is None:
            return
        if w.check_retained(msg.payload) == "republish":
            self.link.publish(w.head_topic, w.full_bytes, qos=1, retain=True)
        w.synced, w.sync_deadline = True, None

    def _after_batch(self, final: bool = False) -> None:
        now = time.monotonic()
        for w in self.fleets.values():
            if not w.synced and w.sync_deadline is not None and now >= w.sync_deadline:
                verdict = w.retained_missing()
                if verdict == "republish":
                    log.info("fleet %s: no retained head on the broker; publishing v%d", w.name,
                             w.state.published.version)
                    self.link.publish(w.head_topic, w.full_bytes, qos=1, retain=True)
                w.synced, w.sync_deadline = True, None
            due = now - w.last_publish >= self.config.min_interval_ms / 1000.0
            if w.dirty and (due or final) and (w.synced or final):
                self._publish(w)
            if w.unacked and (final or len(w.unacked) >= self.config.checkpoint_every
                              or now - w.last_checkpoint >= self.config.checkpoint_s):
                self._checkpoint(w)
            elif final:
                self._checkpoint(w)

    def _checkpoint(self, w: FleetWorker) -> None:
        """Save the fleet's state, then acknowledge the samples it includes."""
        w.state.commit()
        w.last_checkpoint = time.monotonic()
        for m in w.unacked:
            self.link.ack(m)
        w.unacked.clear()

    def _hold_back(self, w: FleetWorker, head: Head, figures: dict, n_samples: int) -> None:
        """A candidate failed the real-face guard: keep learning, publish nothing, say so (log, status, MLflow)."""
        w.guard.held_back += 1
        log.warning("fleet %s: holding back head v%d (not published): real-face guard: %s; agreement %.3f, "
                    "confident %.3f, pretrained %.3f", w.name, head.version, "; ".join(figures["problems"]),
                    figures["agreement"], figures["agreement_confident"], figures["baseline"])
        pu = PublishedUpdate(fleet=w.name, version=head.version, base_version=w.state.published.version,
                             sha256=head.sha256, delta_bytes=0, full_bytes=0, samples=n_samples,
                             learned_total=w.state.learned, published_at=time.time(),
                             realface_agreement=figures["agreement"],
                             realface_agreement_confident=figures["agreement_confident"], held_back=True)
        self.held_back.append(pu)
        if self.tracker is not None:
            self.tracker.record(pu)
        if self.metrics is not None:
            self.metrics.held_back.labels(w.name).inc()
        self._publish_status(w)

    def _publish_status(self, w: FleetWorker) -> None:
        try:
            self.link.publish(self.topics.fleet_service_status(w.name), json.dumps(_fleet_status(w)).encode(),
                              qos=1, retain=True)
        except Exception as e:  # status is best effort; learning and updates go on
            log.debug("fleet %s: service status not published: %s", w.name, e)

    def _publish(self, w: FleetWorker) -> None:
        upd = w.make_update()
        sample_ids, w.dirty_samples = w.dirty_samples, []
        first_received, w.first_received_at = w.first_received_at, None
        if upd is None:
            return
        delta, full, result = upd
        figures = None
        if w.guard is not None:
            ok, figures = w.guard.judge(result)
            if not ok:
                self._hold_back(w, result, figures, len(sample_ids))
                return
            if figures["problems"]:
                log.warning("fleet %s: head v%d fails the real-face guard but is published "
                            "(allow_real_face_regression): %s", w.name, result.version, "; ".join(figures["problems"]))
        base = w.state.published.version if delta is not None else None
        w.state.record_published(result, base)  # durable BEFORE publishing: this number is never reused
        w.full_bytes, w.force_full = full, False
        self.link.publish(w.head_topic, full, qos=1, retain=True)  # full first: a device missing the delta finds it
        # devices follow the delta topic: without a delta base it carries the full update instead
        self.link.publish(w.delta_topic, delta if delta is not None else full, qos=1)
        w.last_publish = time.monotonic()
        pu = PublishedUpdate(fleet=w.name, version=result.version, base_version=base if base is not None else -1,
                             sha256=result.sha256, delta_bytes=len(delta) if delta else 0, full_bytes=len(full),
                             samples=len(sample_ids), learned_total=w.state.learned, published_at=time.time(),
                             sample_ids=sample_ids, first_received_at=first_received,
                             realface_agreement=figures["agreement"] if figures else None,
                             realface_agreement_confident=figures["agreement_confident"] if figures else None)
        self.published.append(pu)
        log.info("fleet %s: published head v%d (%d samples, %s, full %d B)", w.name, result.version,
                 len(sample_ids), f"delta {len(delta)} B" if delta else "no delta", len(full))
        if self.tracker is not None:
            self.tracker.record(pu)
        if self.metrics is not None:
            self.metrics.published.labels(w.name).inc()
            if pu.realface_agreement is not None:
                self.metrics.agreement.labels(w.name).set(pu.realface_agreement)
        self._publish_status(w)
        for fn in list(self.on_published):
            try:
                fn(pu)
            except Exception:
                log.exception("on_published callback failed")



def _fleet_status(w: FleetWorker) -> dict:
    """The retained service status of a fleet: what is published, and what the real-face guard holds back."""
    g = w.guard
    return {"fleet": w.name, "published_version": w.state.published.version, "samples_learned": w.state.learned,
            "real_face_guard": None if g is None else {"held_back": g.held_back, "last": g.last,
                                                       "allow_regression": g.allow_regression},
            "timestamp": time.time()}

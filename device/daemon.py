"""The device daemon: camera -> pipeline -> MQTT predictions/status, with OTA head updates and labelled samples.

Threads: a grabber keeps only the latest frame (a frame not yet processed is replaced and counted as dropped,
so there is never a growing queue); the processing loop runs `pipeline.predict_frame` on the latest frame and
remembers recent frames' embeddings by frame id (for `label`); a control thread applies head updates and
commands in arrival order; paho's thread runs the network; the caller's thread publishes status every N s until
`request_stop()` (SIGTERM/SIGINT in the CLI). A stalled, failed or ended camera is reopened by runtime.sources'
Reconnecting, the one reconnect layer (the daemon journals what it reports).
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import numpy as np

from infantino.runtime.configfile import short_error
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.manifest import MANIFEST_FILE
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.messages import CommandMessage, PredictionMessage, SampleMessage, StatusMessage
from infantino.runtime.contract.rollout import RolloutPlan
from infantino.runtime.contract.head_update import UpdateLimits
from infantino.runtime.contract.signing import TrustedKeys
from infantino.runtime.mqtt import Message
from infantino.runtime.pipeline import FaceResult
from infantino.runtime.sources import Reconnecting, SourceConfig, SourceError, source_kind

from .config import DeviceConfig
from .head_store import HeadStore
from .health import HealthMonitor
from .mqtt_link import DeviceLink
from .ota import OtaApplier, OtaResult
from .samples import SampleOutbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleFacts:
    """What the daemon needs to know about its bundle: extractor id, initial head, embedding size, an id."""

    extractor_id: str
    head: Head
    embedding_dim: int
    bundle_id: str

    @classmethod
    def from_bundle(cls, bundle) -> "BundleFacts":
        m = bundle.manifest
        digest = hashlib.sha256((bundle.root / MANIFEST_FILE).read_bytes()).hexdigest()[:12]
        return cls(extractor_id=bundle.extractor_id, head=bundle.head, embedding_dim=bundle.embedding_dim,
                   bundle_id=f"{m.model.name}:{m.model.version}/{m.target}/{m.precision}@{digest}")


class FrameSlot:
    """Holds only the latest frame; putting a frame over an unprocessed one counts a dropped frame."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: tuple[int, np.ndarray, float] | None = None
        self.grabbed = 0
        self.dropped = 0
        self.last_put = time.monotonic()

    def put(self, frame_id: int, frame: np.ndarray) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = (frame_id, frame, time.time())
            self.grabbed += 1
            self.last_put = time.monotonic()
            self._cond.notify()

    def take(self, timeout: float) -> tuple[int, np.ndarray, float] | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


@dataclass
class FrameRecord:
    """A processed frame kept for labelling: its faces (boxes, predictions, embeddings; never the image)."""

    frame_id: int
    timestamp: float
    head_version: Optional[int]
    faces: list[FaceResult] = field(default_factory=list)


class FrameRing:
    """The last N processed frames by frame id."""

    def __init__(self, size: int):
        self.size = size
        self._d: collections.OrderedDict[int, FrameRecord] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, rec: FrameRecord) -> None:
        with self._lock:
            self._d[rec.frame_id] = rec
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def get(self, frame_id: int | None) -> FrameRecord | None:
        """The frame with this id, or (None) the latest frame that has a face."""
        with self._lock:
            if frame_id is not None:
                return self._d.get(frame_id)
            for rec in reversed(self._d.values()):
                if rec.faces:
                    return rec
            return None

    def span(self) -> tuple[int, int] | None:
        with self._lock:
            if not self._d:
                return None
            return next(iter(self._d)), next(reversed(self._d))

    def recent(self, n: int) -> list[FrameRecord]:
        with self._lock:
            return list(self._d.values())[-n:]


# Upper bounds (ms) of the cumulative latency histogram (exported as Prometheus histograms by device/web).
LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500)


class Stats:
    """Frame rate and per-stage latency over a sliding window, plus cumulative counts since start."""

    def __init__(self, window: int = 200, fps_window_s: float = 5.0):
        self._lat: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=window))
        self._times: collections.deque = collections.deque(maxlen=5000)
        self.fps_window_s = fps_window_s
        self.frames = 0
        self.faces = 0
        self._hist: dict[str, list] = {}  # stage -> [bucket counts..., +Inf count, sum ms]
        self._lock = threading.Lock()

    def record(self, timings: dict[str, float], faces: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames += 1
            self.faces += faces
            self._times.append(now)
            for k, v in timings.items():
                v = float(v)
                self._lat[k].append(v)
                h = self._hist.get(k)
                if h is None:
                    h = self._hist[k] = [0] * (len(LATENCY_BUCKETS_MS) + 1) + [0.0]
                h[bisect.bisect_left(LATENCY_BUCKETS_MS, v)] += 1
                h[-1] += v

    def histograms(self) -> dict[str, tuple[list[int], float]]:
        """stage -> (counts per bucket of LATENCY_BUCKETS_MS plus +Inf, not cumulative; sum in ms) since start."""
        with self._lock:
            return {k: (list(h[:-1]), h[-1]) for k, h in self._hist.items()}

    def fps(self) -> float:
        now = time.monotonic()
        with self._lock:
            ts = [t for t in self._times if now - t <= self.fps_window_s]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)

    def latency_ms(self) -> dict[str, float]:
        with self._lock:
            out = {k: round(float(np.median(v)), 3) for k, v in self._lat.items() if v}
            if self._lat.get("total"):
                out["total_p95"] = round(float(np.percentile(self._lat["total"], 95)), 3)
        return out


class PredictionLimiter:
    """Publish predictions when they change (at most `max_hz`) and at least every `heartbeat_s`."""

    def __init__(self, max_hz: float, heartbeat_s: float):
        self.min_gap = 1.0 / max_hz
        self.heartbeat_s = heartbeat_s
        self._last_key: Any = object()
        self._last_t = float("-inf")

    def should_publish(self, key, now: float) -> bool:
        since = now - self._last_t
        if (key != self._last_key and since >= self.min_gap) or since >= self.heartbeat_s:
            self._last_key, self._last_t = key, now
            return True
        return False


class DeviceDaemon:
    """One camera's daemon. `pipeline` is a runtime Pipeline (predict_frame/predict, head, swap_head);
    `source_factory()` opens the camera and returns an iterable of BGR frames (reopened when it stalls or ends).
    """

    def __init__(self, config: DeviceConfig, pipeline, facts: BundleFacts, source_factory: Callable[[], Iterable],
                 *, update_public_key=None, backend_name: str | None = None):
        self.config = config
        self.pipeline = pipeline
        self.facts = facts
        self.source_factory = source_factory
        self.update_keys = TrustedKeys.of(update_public_key) if update_public_key is not None else config.update_keys()
        self.backend_name = backend_name or _backend_name(pipeline)
        self.stop_event = threading.Event()
        self.slot = FrameSlot()
        self.ring = FrameRing(config.label_buffer_frames)
        self.stats = Stats()
        self.errors: collections.deque[str] = collections.deque(maxlen=config.errors_kept)
        self.inbox: queue.Queue = queue.Queue()
        self._status_now = threading.Event()
        self._frame_id = 0
        self.camera: Reconnecting | None = None
        self.started_at = time.time()
        self.latest: tuple[FrameRecord, np.ndarray] | None = None  # newest processed frame (for a live view)
        self._pipeline_lock = threading.Lock()  # the camera loop and predict_image() share one pipeline
        self.outbox = SampleOutbox(self._publish_sample, lambda: self.pipeline.head.version)
        self.limiter = PredictionLimiter(config.publish.predictions_max_hz, config.publish.predictions_heartbeat_s)
        self._threads: list[threading.Thread] = []
        self.store: HeadStore | None = None
        self.ota: OtaApplier | None = None
        self.link: DeviceLink | None = None
        self.on_applied: list[Callable[[OtaResult], None]] = []
        self.health = HealthMonitor(facts.head)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "DeviceDaemon":
        """Load the last good head, connect, and start the threads (returns at once)."""
        self.store = HeadStore(self.config.state_dir)
        loaded = self.store.load(self.facts.head)
        for p in loaded.problems:
            self._error(f"head store: {p}")
        if self.pipeline.head.sha256 != loaded.head.sha256 or self.pipeline.head.version != loaded.head.version:
            self.pipeline.swap_head(loaded.head)
        self.health = HealthMonitor(loaded.head)
        self.link = DeviceLink(self.config, on_update=lambda m: self.inbox.put(("update", m)),
                               on_command=lambda m: self.inbox.put(("cmd", m)),
                               on_connect=lambda _sp: self._status_now.set(),
                               on_plan=lambda m: self.inbox.put(("plan", m)))
        self.ota = OtaApplier(self.store, self.update_keys, self.facts.extractor_id, fleet=self.config.fleet,
                              limits=UpdateLimits(max_bytes=self.config.ota.max_update_bytes),
                              embedding_dim=self.facts.embedding_dim, swap=self._swap_head,
                              request_full_head=self.link.request_full_head, on_result=self._on_ota_result)
        for name, target in (("process", self._process_loop), ("control", self._control_loop)):
            t = threading.Thread(target=target, name=f"infantino-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._start_grabber()
        self.link.start()
        log.info("device %s (fleet %s) running head v%d from %s; bundle %s; backend %s", self.config.device_id,
                 self.config.fleet, loaded.head.version, loaded.source, self.facts.bundle_id, self.backend_name)
        return self

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """start(), supervise until request_stop(), then stop cleanly. Returns the exit code (0)."""
        self.start()
        try:
            self.supervise()
        finally:
            self.stop()
        return 0

    def supervise(self) -> None:
        """Status every N seconds (and on events), held samples when due, until stop is requested."""
        next_status = time.monotonic()
        while not self.stop_event.is_set():
            self.outbox.flush_due()
            now = time.monotonic()
            if self._status_now.is_set() or now >= next_status:
                self._status_now.clear()
                self.publish_status()
                pub = self.config.publish
                next_status = now + (pub.canary_status_interval_s if self.link is not None and self.link.ring
                                     else pub.status_interval_s)
            self._status_now.wait(min(0.2, max(0.0, next_status - now)))
        log.info("stop requested")

    def stop(self) -> None:
        self.stop_event.set()
        if self.camera is not None:
            self.camera.close()
        for t in self._threads:
            t.join(timeout=5)
        if self.link is not None:
            if self.outbox.flush_due(everything=True):  # labels still in their undo window were meant to be sent
                log.info("sent the held samples before stopping")
            self.link.stop(status=self.status(state="offline"))
        if self.store is not None:
            self.store.close()
        log.info("device %s stopped (%d frames, %d dropped)", self.config.device_id, self.stats.frames,
                 self.slot.dropped)

    # ---- camera --------------------------------------------------------------------------------
    def _open_camera(self) -> Reconnecting:
        """The camera behind runtime.sources' one reconnect layer (stall, failure and end handled there). A live
        camera drops its oldest frame when the daemon is behind; a file or folder is read at the daemon's pace
        (played in real time at camera.fps), never skipped."""
        cam = self.config.camera
        try:
            live = source_kind(cam.source) in ("camera", "url")
        except SourceError:  # a path that is not there yet: the reconnect layer reports it
            live = True
        cfg = SourceConfig(spec=cam.source, stall_timeout=cam.stall_timeout_s,
                           backoff_initial=max(cam.reopen_delay_s, 0.01),
                           backoff_max=max(cam.reopen_delay_s * 8, 0.01, min(10.0, cam.stall_timeout_s)),
                           open_timeout=cam.stall_timeout_s, queue_size=1, drop_old=live)
        return Reconnecting(cfg, self.source_factory, reopen_on_end=cam.reopen_on_end,
                            on_event=lambda text: self._error(f"camera {text}"))

    @property
    def camera_state(self) -> str:
        return self.camera.state if self.camera is not None else "starting"

    @property
    def camera_reopens(self) -> int:
        return self.camera.stats["reopens"] if self.camera is not None else 0

    def _start_grabber(self) -> None:
        self.camera = self._open_camera()
        t = threading.Thread(target=self._grab_loop, name="infantino-grab", daemon=True)
        t.start()
        self._threads.append(t)

    def _grab_loop(self) -> None:
        """Frames from the camera into the latest-frame slot, paced to camera.fps for files and folders."""
        period = 1.0 / self.config.camera.fps if self.config.camera.fps else 0.0
        next_t = time.monotonic()
        try:
            for item in self.camera:
                if self.stop_event.is_set():
                    break
                frame = _frame_of(item)
                if frame is None:
                    continue
                if period:  # pace files/folders to real time (cameras deliver at their own rate)
                    next_t = max(next_t + period, time.monotonic() - period)
                    if self.stop_event.wait(max(0.0, next_t - time.monotonic())):
                        break
                self._frame_id += 1
                self.slot.put(self._frame_id, frame)
        except Exception as e:  # SourceError after the retries (none by default): the daemon keeps serving
            self._error(f"camera: {e}")
        if self.camera.state == "ended":
            log.info("camera source ended")

    # ---- frames ----------------------------------------------------------------------------------
    def _run_pipeline(self, frame: np.ndarray) -> tuple[list, dict[str, float], Optional[int], float]:
        """(faces, stage timings ms, head version or None, ms spent waiting for the lock) of one frame, under the
        pipeline lock: the camera loop and the HTTP API take turns, never one inside the other."""
        t0 = time.perf_counter()
        with self._pipeline_lock:
            waited = (time.perf_counter() - t0) * 1e3
            predict_frame = getattr(self.pipeline, "predict_frame", None)
            if predict_frame is not None:
                fr = predict_frame(frame)
                return fr.faces, dict(fr.timings), fr.head_version, waited
            faces = self.pipeline.predict(frame)
            return faces, (dict(faces[0].timings) if faces else {}), None, waited

    def _process_loop(self) -> None:
        while not self.stop_event.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            frame_id, frame, grabbed_at = item
            t0 = time.perf_counter()
            try:
                faces, timings, _, _ = self._run_pipeline(frame)
            except Exception as e:
                self._error(f"frame {frame_id}: {type(e).__name__}: {e}")
                continue
            timings["total"] = (time.perf_counter() - t0) * 1e3
            self.stats.record(timings, faces=len(faces))
            try:
                self.health.observe(faces)
            except Exception as e:  # the shadow head is advisory: it must never stop the camera loop
                self._error(f"head health: {type(e).__name__}: {e}")
            head_version = faces[0].head_version if faces else self.pipeline.head.version
            rec = FrameRecord(frame_id, grabbed_at, head_version, list(faces))
            self.ring.add(rec)
            self.latest = (rec, frame)  # a reference only: a live view encodes it on its own thread, if at all
            self._maybe_publish_predictions(frame_id, grabbed_at, head_version, faces)

    def predict_image(self, frame: np.ndarray):
        """Run the daemon's pipeline on one image (the HTTP API); between two camera frames, never during one.
        Returns (faces, timings ms, head version); the image is not kept and cannot be labelled."""
        t0 = time.perf_counter()
        faces, timings, version, waited = self._run_pipeline(frame)
        timings["wait"] = waited
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return faces, timings, version if version is not None else self.pipeline.head.version

    def _maybe_publish_predictions(self, frame_id: int, ts: float, head_version: int, faces) -> None:
        if not self.config.publish.predictions or self.link is None or not self.link.connected:
            return
        key = tuple((f.label, tuple(f.prediction_set)) for f in faces)
        if not self.limiter.should_publish(key, time.monotonic()):
            return
        msg = PredictionMessage(device_id=self.config.device_id, frame_id=frame_id, timestamp=ts,
                                head_version=head_version,
                                faces=[f.to_message() for f in faces])
        self.link.publish_prediction(msg)

    # ---- updates and commands --------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                kind, msg = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if kind == "update":
                    self._handle_update(msg)
                elif kind == "plan":
                    self._handle_plan(msg)
                else:
                    self._handle_command(msg)
            except Exception as e:  # never let one message kill the control thread
                log.exception("handling %s on %s failed", kind, msg.topic)
                self._error(f"{kind} on {msg.topic}: {type(e).__name__}: {e}")

    def _handle_update(self, msg: Message) -> OtaResult:
        res = self.ota.handle(msg.payload, source=msg.topic, received_at=msg.received_at)
        if self.link.is_full_head(msg):
            self.link.full_head_handled()
        return res

    def _swap_head(self, new: Head) -> None:
        """Install a head in the pipeline; the replaced head becomes the health monitor's shadow."""
        old = self.pipeline.head
        fps, latency = self.stats.fps(), self.stats.latency_ms().get("total")
        self.pipeline.swap_head(new)
        self.health.head_changed(old, new, fps=round(fps, 2) if fps else None, latency_ms=latency)

    def _handle_plan(self, msg: Message) -> None:
        """The fleet's retained rollout plan: follow the canary ring's head topics when this device is in it."""
        limit = self.config.publish.max_plan_bytes
        if not msg.payload:  # the plan was cleared (rollout switched off): back to the main ring
            ring = None
        else:
            try:
                if len(msg.payload) > limit:
                    raise ValueError(f"rollout plan of {len(msg.payload)} bytes exceeds the {limit}-byte limit")
                plan = RolloutPlan.model_validate_json(msg.payload)
                if plan.fleet != self.config.fleet:
                    raise ValueError(f"plan is for fleet {plan.fleet!r}, this device is in {self.config.fleet!r}")
            except ValueError as e:
                self._error(f"bad rollout plan on {msg.topic}: {short_error(e)}")
                return
            ring = plan.ring_of(self.config.device_id)
        if self.link.set_ring(ring):
            self._status_now.set()

    def _on_ota_result(self, res: OtaResult) -> None:
        if res.status == "rejected":
            self._error(f"update rejected ({res.reason}): {res.message}")
            self._status_now.set()
        elif res.status in ("applied", "rolled_back"):
            self._status_now.set()
            for fn in list(self.on_applied):
                fn(res)

    def _handle_command(self, msg: Message) -> None:
        limit = self.config.ota.max_command_bytes
        try:
            if len(msg.payload) > limit:
                raise ValueError(f"command of {len(msg.payload)} bytes exceeds the {limit}-byte limit")
            cmd = CommandMessage.model_validate_json(msg.payload)
        except ValueError as e:
            self._error(f"bad command on {msg.topic}: {short_error(e)}")
            self.link.reply(msg, json.dumps({"ok": False, "error": f"bad command: {short_error(e)}"}))
            return
        log.info("command %s (request %s)", cmd.command, cmd.request_id)
        if cmd.command == "label":
            reply = self.label(cmd.labels or cmd.label, cmd.frame_id, cmd.annotator)
        elif cmd.command == "rollback":
            res = self.ota.rollback(source="cmd")
            reply = {"ok": res.status == "rolled_back", "result": res.as_dict()}
            if res.status != "rolled_back":
                reply["error"] = res.message
        elif cmd.command == "request-full-head":
            self.link.request_full_head()
            reply = {"ok": True, "head_version": self.pipeline.head.version}
        else:  # snapshot: status now, plus the recent frames one can label
            self._status_now.set()
            reply = {"ok": True, "status": json.loads(self.status().model_dump_json(exclude_none=True)),
                     "frames": [{"frame_id": r.frame_id, "timestamp": r.timestamp, "head_version": r.head_version,
                                 "faces": [{"box": list(f.to_message().box), "label": f.label} for f in r.faces]}
                                for r in self.ring.recent(20)]}
        reply.update(command=cmd.command, request_id=cmd.request_id)
        self.link.reply(msg, json.dumps(reply))

    def label(self, label: str | list[str] | None, frame_id: int | None = None, annotator: str | None = None,
              face: int | None = None, hold_s: float = 0.0) -> dict:
        """Send the embedding of a recent frame's face with one label, or several when the expression is
        ambiguous (SampleMessage.labels: the trainer learns their vote fractions); the image stays here.

        `face` is the face's index in the frame (default: the largest); `hold_s` holds the sample that long
        before it is published, so that `undo(sample_id)` within that time keeps it from being learned.
        """
        labels = [label] if isinstance(label, str) else list(label or [])
        if not labels:
            return {"ok": False, "error": "a label is required"}
        bad = [lb for lb in labels if lb not in CLASSES]
        if bad:
            return {"ok": False, "error": f"unknown label {bad[0]!r}; valid: {', '.join(CLASSES)}"}
        labels = list(dict.fromkeys(labels))  # one vote per label from one person
        rec = self.ring.get(frame_id)
        span = self.ring.span()
        held = f"frames {span[0]}-{span[1]}" if span else "no frames yet"
        if rec is None:
            what = f"frame {frame_id} is not in the buffer ({held})" if frame_id is not None else \
                f"no recent frame has a face ({held})"
            return {"ok": False, "error": what}
        if not rec.faces:
            return {"ok": False, "error": f"frame {rec.frame_id} has no face"}
        if face is None:
            face = max(range(len(rec.faces)), key=lambda i: rec.faces[i].area)
        elif not 0 <= face < len(rec.faces):
            return {"ok": False, "error": f"frame {rec.frame_id} has {len(rec.faces)} face(s), no face {face}"}
        chosen = rec.faces[face]
        try:
            sample = SampleMessage(device_id=self.config.device_id, fleet=self.config.fleet,
                                   sample_id=f"{self.config.device_id}-{uuid.uuid4().hex}",
                                   embedding=[float(v) for v in chosen.embedding],
                                   extractor_id=self.facts.extractor_id,
                                   label=labels[0] if len(labels) == 1 else None,
                                   labels=labels if len(labels) > 1 else None, annotator=annotator,
                                   frame_id=rec.frame_id, head_version=rec.head_version)
        except ValueError as e:
            return {"ok": False, "error": short_error(e)}
        out = self.outbox.add(sample, hold_s=hold_s)
        log.info("sample %s: frame %d face %d labelled %s%s", sample.sample_id, rec.frame_id, face,
                 "+".join(labels), f" (held {hold_s:g} s)" if hold_s > 0 else "")
        return {"ok": True, "sample_id": sample.sample_id, "frame_id": rec.frame_id, "face": face,
                "label": labels[0] if len(labels) == 1 else None, "labels": labels, "predicted": chosen.label,
                "state": out.state, "publish_at": out.publish_at}

    def undo(self, sample_id: str) -> dict:
        """Take back a label still in its hold window (it is then never published)."""
        ok, why = self.outbox.undo(sample_id)
        return {"ok": ok, "sample_id": sample_id, **({} if ok else {"error": why})}

    def _publish_sample(self, sample: SampleMessage):
        if self.link is None:
            raise RuntimeError("the daemon is not connected yet")
        return self.link.publish_sample(sample)

    @property
    def samples_sent(self) -> int:
        return self.outbox.sent

    # ---- status ------------------------------------------------------------------------------------
    def _error(self, text: str) -> None:
        log.warning(text)
        self.errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}")

    def status(self, state: str = "online") -> StatusMessage:
        head = self.pipeline.head
        ota = self.ota
        rec = self.ring.get(None)
        fps, latency = round(self.stats.fps(), 2), self.stats.latency_ms()
        return StatusMessage(
            device_id=self.config.device_id, state=state, head_version=head.version, head_sha256=head.sha256,
            bundle_id=self.facts.bundle_id, backend=self.backend_name, fps=fps,
            latency_ms=latency, frames=self.stats.frames, dropped_frames=self.slot.dropped,
            errors=list(self.errors), last_update=ota.last_result.as_dict() if ota and ota.last_result else None,
            rejections=dict(ota.rejections) if ota else {},
            previous_head_version=self.store.previous.version if self.store and self.store.previous else None,
            camera=self.camera_state, uptime_s=round(time.time() - self.started_at, 1),
            samples_sent=self.samples_sent, last_face_frame_id=rec.frame_id if rec is not None else None,
            fleet=self.config.fleet, ring=self.link.ring if self.link is not None else None,
            health=self.health.report(fps=fps, latency_ms=latency.get("total")),
        )

    def publish_status(self) -> None:
        if self.link is not None and self.link.connected:
            self.link.publish_status(self.status())


def _frame_of(item) -> np.ndarray | None:
    """Sources may yield frames or (id/timestamp, frame) tuples."""
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, (tuple, list)):
        for v in reversed(item):
            if isinstance(v, np.ndarray):
                return v
    for attr in ("frame", "image"):
        frame = getattr(item, attr, None)
        if isinstance(frame, np.ndarray):
            return frame
    return None


def _backend_name(pipeline) -> str | None:
    b = getattr(pipeline, "backend", None)
    return getattr(b, "name", None) if b is not None else None


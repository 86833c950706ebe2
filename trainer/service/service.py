"""The update service process (`infantino-train serve`): the fleets this worker owns, each served by a FleetUnit;
MLflow, the fleet page and metrics shared by them; ownership rebalanced while it runs."""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Callable, Optional

from infantino.runtime.contract.signing import load_private_key, load_public_key
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import Message, MqttLink

from .config import TrainerServiceConfig
from .fleet import FleetWorker
from .ownership import Ownership
from .tracker import GateDecision, PublishedUpdate, VersionTracker
from .unit import COUNTERS, FleetUnit

log = logging.getLogger(__name__)

RETRY_BROKEN_S = 60.0  # a fleet whose state failed to load is tried again after this long


class UpdateService:
    """Samples in, signed head updates out, for the fleets this worker owns. `start()` returns at once; `run()`
    blocks until `request_stop()`. With one worker it owns every fleet; with several sharing `state_dir`, each
    fleet has exactly one owner and a dead worker's fleets are taken over (trainer.service.ownership)."""

    def __init__(self, config: TrainerServiceConfig, read_only: bool = False):
        """read_only: load and check everything (keys, bundles, head states, saved fleet state) writing nothing."""
        self.config = config
        self.read_only = read_only
        self.topics = Topics(config.topic_prefix)
        self.worker_id = config.workers.resolved_id()
        self.signing_key = load_private_key(config.signing_key)
        self.public_key = (load_public_key(config.public_key) if config.public_key
                           else self.signing_key.public_key())
        self.fleet_configs = {f.name: f for f in config.fleets}
        self.published: collections.deque[PublishedUpdate] = collections.deque(maxlen=10000)
        self.held_back: collections.deque[PublishedUpdate] = collections.deque(maxlen=10000)
        self.decisions: collections.deque[GateDecision] = collections.deque(maxlen=1000)
        self.on_published: list[Callable[[PublishedUpdate], None]] = []
        self.units: dict[str, FleetUnit] = {}
        self._checked: dict[str, FleetWorker] = {}
        self._retired = dict.fromkeys(COUNTERS, 0)
        self._broken: dict[str, float] = {}
        self._units_lock = threading.RLock()
        self.stop_event = threading.Event()
        self.metrics = self.web = self.status_link = None
        self.device_status: dict[str, dict] = {}  # device id -> its last retained status (web page, metrics)
        self._device_fleet = {d: f.name for f in reversed(config.fleets) for d in (f.devices or ())}
        self.tracker = None
        self.ownership: Ownership | None = None
        self._started = False
        if read_only:
            self._checked = {f.name: FleetWorker(f, config, self.signing_key, self.public_key, read_only=True)
                             for f in config.fleets}
            return
        if config.mlflow.enabled:
            self.tracker = VersionTracker(config.mlflow, {
                "min_interval_ms": config.min_interval_ms, "delta_dtype": config.delta_dtype,
                "compression": config.compression, "service_id": config.service_id})
        self.ownership = Ownership(config.state_dir, self.worker_id)
        try:
            self._rebalance(start=False)  # the fleets this worker serves, loaded now: a bad state fails here
        except BaseException:
            self.ownership.close()
            raise
        if config.web.enabled:
            self._start_web_side()
        self._thread = threading.Thread(target=self._balance_loop, name="infantino-ownership", daemon=True)

    # ---- what tests, the CLI and the web page read ----------------------------------------------------
    @property
    def fleets(self) -> dict[str, FleetWorker]:
        """The fleets this worker serves (all of them with --check), by name."""
        if self.read_only:
            return dict(self._checked)
        with self._units_lock:
            return {name: u.w for name, u in self.units.items()}

    @property
    def counters(self) -> dict[str, int]:
        """Samples by outcome over every fleet this worker serves or served."""
        with self._units_lock:
            out = dict(self._retired)
            for u in self.units.values():
                for k, v in u.counters.items():
                    out[k] += v
        return out

    @property
    def ready(self) -> bool:
        """Every fleet this worker serves is connected and synced with the broker's retained heads (a worker with
        no fleet, standing by, is ready too)."""
        with self._units_lock:
            units = list(self.units.values())
        return self._started and all(u.ready for u in units)

    def unit(self, fleet: str) -> FleetUnit | None:
        with self._units_lock:
            return self.units.get(fleet)

    def rollout_command(self, fleet: str, action: str, version: Optional[int] = None) -> dict:
        """An operator's commit/abort for a fleet's canary version (the web API; MQTT has its own topic)."""
        u = self.unit(fleet)
        if u is None:
            owner = self.ownership.owner_of(fleet) if self.ownership and fleet in self.fleet_configs else None
            return {"ok": False, "error": f"fleet {fleet!r} is not served by this worker"
                    + (f" (worker {owner} owns it)" if owner else "")}
        return u.command(action, version)

    # ---- ownership ---------------------------------------------------------------------------------
    def _rebalance(self, start: bool = True) -> None:
        """Serve an even share of the fleets: release extras (after a clean stop), take free ones."""
        own = self.ownership
        names = list(self.fleet_configs)
        live = own.live_workers()
        share = own.share(len(names), live)
        with self._units_lock:
            owned = sorted(self.units, key=own.preference)
        for name in owned[:max(0, len(owned) - share)]:  # least preferred first
            log.info("worker %s: handing fleet %s over (%d live workers, share %d)", self.worker_id, name,
                     len(live), share)
            self._stop_unit(name)
        now = time.monotonic()
        for name in sorted(names, key=own.preference, reverse=True):
            with self._units_lock:
                if len(self.units) >= share:
                    break
                if name in self.units or now < self._broken.get(name, 0.0):
                    continue
            if not own.try_acquire(name):
                continue
            try:
                worker = FleetWorker(self.fleet_configs[name], self.config, self.signing_key, self.public_key)
                unit = FleetUnit(worker, self)
            except Exception:
                own.release(name)
                if not start:  # at construction: the caller sees the error (bad config, unreadable state)
                    raise
                log.exception("worker %s: fleet %s could not be loaded; retrying in %.0f s", self.worker_id, name,
                              RETRY_BROKEN_S)
                self._broken[name] = now + RETRY_BROKEN_S
                continue
            with self._units_lock:
                self.units[name] = unit
            if start:
                unit.start()

    def _stop_unit(self, name: str) -> None:
        with self._units_lock:
            unit = self.units.pop(name, None)
        if unit is None:
            return
        unit.stop()
        self.ownership.release(name)
        with self._units_lock:
            for k, v in unit.counters.items():
                self._retired[k] += v

    def _balance_loop(self) -> None:
        while not self.stop_event.wait(self.config.workers.rebalance_s):
            try:
                self._rebalance()
            except Exception:  # ownership trouble must not stop the fleets already served
                log.exception("worker %s: rebalancing failed (will retry)", self.worker_id)

    # ---- web page, API and metrics ------------------------------------------------------------------
    def _start_web_side(self) -> None:
        """Metrics, device statuses (their retained status topics) and the web server object (started later)."""
        from infantino.runtime.webserver import WebServer  # optional: fastapi/uvicorn only when web.enabled

        from ..web.app import create_app
        from ..web.metrics import ServiceMetrics

        self.metrics = ServiceMetrics()
        self.status_link = MqttLink(self.config.broker, client_id=f"{self.config.service_id}.{self.worker_id}.web",
                                    clean_start=True)
        self.status_link.subscribe(self.topics.status("+"), self._on_status, qos=0)
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
        """Every fleet this worker serves: published head, samples learned, rollout phase and gate figures, head
        history (last 50 versions, canary and held-back ones included) with real-face agreement, and its devices
        from their retained statuses."""
        now = time.time()
        by_fleet: dict[Optional[str], list[dict]] = {}
        for dev, st in sorted(self.device_status.items()):
            health = st.get("health") or {}
            by_fleet.setdefault(self.fleet_of(dev), []).append({
                "device_id": dev, "online": st.get("state") == "online", "head_version": st.get("head_version"),
                "ring": st.get("ring") or "main", "fps": st.get("fps"), "camera": st.get("camera"),
                "rejections": st.get("rejections") or {}, "label_changed": health.get("label_changed"),
                "last_update": (st.get("last_update") or {}).get("message"),
                "age_s": round(now - float(st.get("timestamp") or st["received_at"]), 1)})
        history = sorted(list(self.published) + list(self.held_back), key=lambda u: u.published_at)
        tracker = self.tracker
        fleets = []
        with self._units_lock:
            units = dict(self.units)
        for name, u in units.items():
            w = u.w
            failed = set((u.rollout.state.rollout.get("failed") or []) if u.rollout is not None else [])
            hist = [{"version": h.version, "held_back": h.held_back, "ring": h.ring, "note": h.note,
                     "failed": h.version in failed, "samples": h.samples,
                     "learned_total": h.learned_total, "realface_agreement": h.realface_agreement,
                     "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h.published_at))}
                    for h in history if h.fleet == name][-50:][::-1]
            fleets.append({"fleet": name, "published_version": w.state.published.version, "worker": self.worker_id,
                           "samples_learned": w.state.learned, "held_back": w.guard.held_back if w.guard else 0,
                           "rollout": u.rollout.status() if u.rollout is not None else None,
                           "history": hist, "devices": by_fleet.get(name, []),
                           "mlflow_run_id": tracker.runs.get(name) if tracker else None,
                           "mlflow_experiment_id": getattr(tracker, "experiment_id", None) if tracker else None})
        if by_fleet.get(None):
            fleets.append({"fleet": "(any-device fleets)", "published_version": None, "samples_learned": None,
                           "held_back": 0, "rollout": None, "history": [], "devices": by_fleet[None],
                           "mlflow_run_id": None, "mlflow_experiment_id": None})
        return {"fleets": fleets, "worker": self.worker_id, "generated_at": now}

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
        if self.status_link is not None:
            self.status_link.start()
        if self.tracker is not None:
            self.tracker.start()
        with self._units_lock:
            units = list(self.units.values())
        for u in units:
            u.start()
        self._started = True
        self._thread.start()
        return self

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
        """Publish what was learned, persist, acknowledge, disconnect, release the fleets, flush MLflow."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._units_lock:
            names = list(self.units)
        for name in names:
            self._stop_unit(name)
        if self.status_link is not None:
            self.status_link.stop(timeout=2.0)
        if self.web is not None:
            self.web.stop()
        if self.ownership is not None:
            self.ownership.close()
            self.ownership = None
        if self.tracker is not None:
            self.tracker.stop()
        log.info("update service worker %s stopped: %s", self.worker_id, self.counters)

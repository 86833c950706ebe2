"""One fleet served by this worker: its own persistent MQTT session, its loop, publishing and rollout.

The session's client id is `<service_id>.<fleet>` on every worker, so a worker that takes a fleet over resumes
the session: the broker redelivers every sample the previous owner had not acknowledged (samples are acknowledged
only after the checkpoint that includes them), and the durable version record keeps version numbers unique.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Optional

from infantino.runtime.configfile import short_error
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.messages import SampleMessage, StatusMessage
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import Message, MqttLink

from .fleet import FleetWorker
from .rollout import GateVerdict, Rollout
from .state import MAIN
from .tracker import GateDecision, PublishedUpdate

if TYPE_CHECKING:  # the service imports this module
    from .service import UpdateService

log = logging.getLogger(__name__)

RETAINED_SYNC_S = 1.0  # after a connect, wait this long for the broker's retained heads before re-publishing ours
STATUS_EVERY_S = 2.0   # the fleet's service status during a canary phase (gate figures)
COUNTERS = ("received", "learned", "duplicates", "invalid", "dropped")


class FleetUnit:
    """Learning, publishing and the rollout of one fleet, on its own MQTT session and thread."""

    def __init__(self, worker: FleetWorker, host: "UpdateService"):
        self.w = worker
        self.name = worker.name
        self.host = host
        cfg = host.config
        self.config = cfg
        self.topics: Topics = host.topics
        self.rollout = Rollout(worker.cfg.rollout, worker.name, worker.state) if worker.cfg.staged else None
        self.ring_topics = {r: self.topics.ring_head(self.name, None if r == MAIN else r) for r in worker.rings}
        self.by_head_topic = {t: r for r, t in self.ring_topics.items()}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.inbox: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.unacked: list[Message] = []
        self.last_publish = 0.0
        self.last_checkpoint = time.monotonic()
        self.last_status = 0.0
        self.synced = dict.fromkeys(worker.rings, False)
        self.sync_deadline: float | None = None
        self.plan_sent = False
        self.announced = False
        self.link = MqttLink(cfg.broker, client_id=cfg.client_id(self.name), clean_start=False, manual_ack=True)
        fc = worker.cfg
        on_sample = lambda m: self.inbox.put(("sample", m))  # noqa: E731
        self.wildcard = fc.devices is None or fc.allow_any_device  # then every fleet's samples arrive here
        if not self.wildcard:
            for dev in fc.devices:
                self.link.subscribe(self.topics.samples(dev), on_sample, qos=1)
        else:
            self.link.subscribe(self.topics.all_samples(), on_sample, qos=1)
        for topic in self.by_head_topic:
            self.link.subscribe(topic, self._on_head_message, qos=1)
        if self.rollout is not None:
            ro = fc.rollout
            if ro.percent > 0:
                self.link.subscribe(self.topics.status("+"), self._on_status, qos=0)
            else:
                for dev in ro.devices:
                    self.link.subscribe(self.topics.status(dev), self._on_status, qos=0)
        self.link.subscribe(self.topics.fleet_service_cmd(self.name), self._on_command, qos=1)
        self.link.add_on_connect(lambda sp: self.inbox.put(("connected", None)))
        self._thread = threading.Thread(target=self._loop, name=f"infantino-fleet-{self.name}", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "FleetUnit":
        self._thread.start()
        self.link.start()
        st = self.w.state
        log.info("fleet %s: served by worker %s; published head v%d, extractor %s…, samples learned so far %d%s",
                 self.name, self.host.worker_id, st.published.version, self.w.extractor_id[:12], st.learned,
                 f"; rollout phase {self.rollout.phase}" if self.rollout else "")
        return self

    @property
    def ready(self) -> bool:
        """Connected, and every ring's retained head checked (updates flow from now on)."""
        return self.link.connected.is_set() and all(self.synced.values())

    def stop(self) -> None:
        """Publish what was learned (not a new canary phase), checkpoint, acknowledge, disconnect."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
            self.link.stop(timeout=3.0)
        if self.w.state.record is not None:
            self.w.state.record.close()

    def command(self, action: str, version: Optional[int] = None, timeout: float = 10.0) -> dict:
        """An operator's rollout command (commit | abort), applied by the fleet's thread; returns its outcome."""
        done, out = threading.Event(), {}
        self.inbox.put(("operator", (action, version, done, out)))
        if not done.wait(timeout):
            return {"ok": False, "error": f"no answer from fleet {self.name} within {timeout:g} s"}
        return out

    # ---- network-thread handlers ------------------------------------------------------------------
    def _on_head_message(self, msg: Message) -> None:
        self.link.ack(msg)
        if msg.retain:
            self.inbox.put(("retained", msg))

    def _on_status(self, msg: Message) -> None:
        """A canary device's retained status: its head's health is what the gate judges (validated: a malformed
        status is ignored, it can neither stall nor steer the gate)."""
        try:
            device = self.topics.device_from_topic(msg.topic)
            if not self.rollout.is_canary(device) or len(msg.payload) > 64 << 10:
                return
            fc = self.w.cfg
            if fc.devices is not None and device not in fc.devices:
                return
            status = StatusMessage.model_validate_json(msg.payload)
        except ValueError as e:
            log.debug("fleet %s: status on %s ignored: %s", self.name, msg.topic, short_error(e))
            return
        if status.device_id == device and status.fleet in (None, self.name):
            lu = status.last_update or {}
            self.inbox.put(("status", (device, {
                "health": status.health.model_dump() if status.health is not None else None,
                "last_update": {"version": lu.get("version"), "status": lu.get("status"), "reason": lu.get("reason")},
                "head_version": status.head_version, "state": status.state, "timestamp": status.timestamp})))

    def _on_command(self, msg: Message) -> None:
        self.link.ack(msg)
        if msg.retain:  # a stale retained command must never act again
            return
        self.inbox.put(("mqtt_cmd", msg))

    # ---- the fleet's thread -------------------------------------------------------------------------
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
                    self._handle(kind, msg)
                except Exception:  # one bad message must not stop the fleet
                    log.exception("fleet %s: handling a %s message failed (continuing)", self.name, kind)
            try:
                self._after_batch(final=stopping and not batch)
            except Exception:  # e.g. a full disk: nothing is acknowledged, so nothing is lost; retried
                log.exception("fleet %s: publishing/checkpointing failed (will retry)", self.name)
                time.sleep(0.5)
            if stopping and not batch:
                return

    def _handle(self, kind: str, msg) -> None:
        if kind == "sample":
            self._handle_sample(msg)
        elif kind == "retained":
            ring = self.by_head_topic.get(msg.topic)
            if ring is not None:
                if self.w.check_retained(ring, msg.payload) == "republish":
                    self.link.publish(msg.topic, self.w.full_bytes[ring], qos=1, retain=True)
                self.synced[ring] = True
        elif kind == "connected":
            self.synced = dict.fromkeys(self.synced, False)
            self.sync_deadline = time.monotonic() + RETAINED_SYNC_S
            self.plan_sent = False
        elif kind == "status":
            device, report = msg
            self.rollout.reports[device] = report
        elif kind == "operator":
            action, version, done, out = msg
            try:
                out.update(self._operator(action, version))
            finally:
                done.set()
        elif kind == "mqtt_cmd":
            self._handle_mqtt_command(msg)

    def _next_wake(self) -> float:
        now = time.monotonic()
        wake = 0.5
        if self.sync_deadline is not None:
            wake = min(wake, max(0.001, self.sync_deadline - now))
        if self.w.dirty:
            due = self.last_publish + self.config.min_interval_ms / 1000.0
            wake = min(wake, max(0.001, due - now))
        if self.unacked:
            wake = min(wake, max(0.001, self.last_checkpoint + self.config.checkpoint_s - now))
        if self.rollout is not None and (self.rollout.phase != "idle" or self.w.dirty):
            wake = min(wake, 0.1)
        return wake

    # ---- samples ---------------------------------------------------------------------------------
    def _handle_sample(self, msg: Message) -> None:
        w = self.w
        try:
            if len(msg.payload) > self.config.max_sample_bytes:
                raise ValueError(f"sample of {len(msg.payload)} bytes exceeds the {self.config.max_sample_bytes}-byte "
                                 "limit")
            sample = SampleMessage.model_validate_json(msg.payload)
            device = self.topics.device_from_topic(msg.topic)
            if sample.device_id != device:
                raise ValueError(f"device_id {sample.device_id!r} does not match the topic's device {device!r}")
            if sample.fleet != self.name:
                if self.wildcard:  # a wildcard session sees every fleet's samples: not ours, not an error
                    self.link.ack(msg)
                    return
                raise ValueError(f"sample names fleet {sample.fleet!r}, device {device} is listed for {self.name}")
            if not w.cfg.allow_any_device and device not in (w.cfg.devices or ()):
                raise ValueError(f"device {device!r} is not listed for fleet {w.name}")
            if sample.extractor_id != w.extractor_id:
                raise ValueError(f"sample embedding comes from extractor {sample.extractor_id[:12]}…, fleet "
                                 f"{w.name} runs {w.extractor_id[:12]}…")
        except ValueError as e:
            self._count("received")
            self._count("invalid")
            log.warning("sample on %s refused: %s", msg.topic, short_error(e))
            self.link.ack(msg)  # nothing to learn: never redeliver
            return
        self._count("received")
        self.unacked.append(msg)
        if w.state.seen_before(sample.sample_id):
            self._count("duplicates")
            log.debug("sample %s seen before (redelivery); dropped", sample.sample_id)
            return
        t0 = time.perf_counter()
        try:
            outcome = w.learn(sample)
            if w.first_received_at is None:
                w.first_received_at = msg.received_at
        except (ValueError, InfantinoError) as e:
            self._count("invalid")
            log.warning("sample %s from %s not learnable: %s", sample.sample_id, device, e)
            w.state.remember(sample.sample_id)
            return
        except Exception:  # a bug, not bad input: say so loudly, and do not let it block the stream
            self._count("invalid")
            log.exception("learning sample %s from %s failed", sample.sample_id, device)
            w.state.remember(sample.sample_id)
            return
        if self.rollout is not None and outcome != "dropped":
            self.rollout.learned(sample)
        m = self.host.metrics
        if m is not None:
            m.learn_seconds.labels(self.name).observe(time.perf_counter() - t0)
        self._count("learned" if outcome != "dropped" else "dropped")

    def _count(self, outcome: str) -> None:
        self.counters[outcome] += 1
        m = self.host.metrics
        if m is not None and outcome != "received":
            m.samples.labels(self.name, outcome).inc()

    # ---- after each batch: sync, publish, rollout, checkpoint ---------------------------------------
    def _after_batch(self, final: bool = False) -> None:
        now = time.monotonic()
        w = self.w
        if self.sync_deadline is not None and now >= self.sync_deadline:
            for ring, ok in self.synced.items():
                if not ok:
                    if w.retained_missing(ring) == "republish":
                        log.info("fleet %s: no retained %s head on the broker; publishing v%d", self.name, ring,
                                 w.state.ring_head(ring).version)
                        self.link.publish(self.ring_topics[ring], w.full_bytes[ring], qos=1, retain=True)
                    self.synced[ring] = True
            self.sync_deadline = None
        synced = all(self.synced.values())
        if synced and not self.announced:  # which worker serves the fleet, as soon as it does
            self.announced = True
            self._publish_status()
        due = now - self.last_publish >= self.config.min_interval_ms / 1000.0
        if self.rollout is None:
            if not self.plan_sent and synced:  # no rollout: clear a plan left from one, devices follow the main ring
                self.link.publish(self.topics.fleet_rollout(self.name), b"", qos=1, retain=True)
                self.plan_sent = True
            if w.dirty and (due or final) and (synced or final):
                self._publish_direct()
        elif synced and not final:
            self._rollout_tick(due)
        if final or (self.unacked and (len(self.unacked) >= self.config.checkpoint_every
                                       or now - self.last_checkpoint >= self.config.checkpoint_s)):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Save the fleet's state, then acknowledge the samples it includes."""
        self.w.state.commit()
        self.last_checkpoint = time.monotonic()
        for m in self.unacked:
            self.link.ack(m)
        self.unacked.clear()

    # ---- publishing ---------------------------------------------------------------------------------
    def _guard(self, head: Head, n_samples: int) -> tuple[bool, Optional[dict]]:
        """The real-face guard on a candidate: (may publish, figures); a held-back version is reported."""
        g = self.w.guard
        if g is None:
            return True, None
        ok, figures = g.judge(head)
        if not ok:
            self._hold_back(head, figures, n_samples)
        elif figures["problems"]:
            log.warning("fleet %s: head v%d fails the real-face guard but is published "
                        "(allow_real_face_regression): %s", self.name, head.version, "; ".join(figures["problems"]))
        return ok, figures

    def _send(self, ring: str, head: Head, delta: bytes | None, full: bytes, n_samples: int = 0,
              sample_ids: list[str] | None = None, first_received: float | None = None,
              figures: dict | None = None, note: str | None = None) -> PublishedUpdate:
        """Durably record, then publish one version to one ring: the retained full head first (a device that
        missed the delta finds it), then the delta (the full update when there is no delta base)."""
        st = self.w.state
        base = st.ring_head(ring).version if delta is not None else None
        st.record_published(head, base, ring)  # durable BEFORE publishing: this number is never reused
        self.w.full_bytes[ring] = full
        self.w.force_full.discard(ring)
        self.link.publish(self.ring_topics[ring], full, qos=1, retain=True)
        self.link.publish(self.topics.ring_delta(self.name, None if ring == MAIN else ring),
                          delta if delta is not None else full, qos=1)
        self.last_publish = time.monotonic()
        pu = PublishedUpdate(fleet=self.name, version=head.version, base_version=base if base is not None else -1,
                             sha256=head.sha256, delta_bytes=len(delta) if delta else 0, full_bytes=len(full),
                             samples=n_samples, learned_total=st.learned, published_at=time.time(),
                             sample_ids=sample_ids or [], first_received_at=first_received,
                             realface_agreement=figures["agreement"] if figures else None,
                             realface_agreement_confident=figures["agreement_confident"] if figures else None,
                             ring=ring, note=note)
        self.host.published.append(pu)
        log.info("fleet %s: published head v%d to %s (%d samples, %s, full %d B)", self.name, head.version,
                 "the fleet" if ring == MAIN else f"ring {ring}", n_samples,
                 f"delta {len(delta)} B" if delta else "no delta", len(full))
        if self.host.tracker is not None:
            self.host.tracker.record(pu)
        m = self.host.metrics
        if m is not None and ring == MAIN:
            m.published.labels(self.name).inc()
            if pu.realface_agreement is not None:
                m.agreement.labels(self.name).set(pu.realface_agreement)
        for fn in list(self.host.on_published):
            try:
                fn(pu)
            except Exception:
                log.exception("on_published callback failed")
        return pu

    def _take_dirty(self) -> tuple[list[str], Optional[float]]:
        w = self.w
        ids, w.dirty_samples = w.dirty_samples, []
        first, w.first_received_at = w.first_received_at, None
        return ids, first

    def _next_candidate(self) -> tuple[Head, list[str], Optional[float], Optional[dict]] | None:
        """The online head as the next version, with the samples it adds since the last one and the real-face
        guard's figures; None when nothing changed or the guard held it back (reported)."""
        cand = self.w.candidate(MAIN)
        ids, first = self._take_dirty()
        if cand is None:
            return None
        ok, figures = self._guard(cand, len(ids))
        return (cand, ids, first, figures) if ok else None

    def _publish_direct(self) -> None:
        """Without a rollout: the online head goes to every device of the fleet at once."""
        nxt = self._next_candidate()
        if nxt is None:
            return
        cand, ids, first, figures = nxt
        delta, full, result = self.w.encode_for(MAIN, cand)
        self._send(MAIN, result, delta, full, len(ids), ids, first, figures)
        self._publish_status()

    def _resend_known(self, ring: str) -> None:
        """A ring's devices hold weights unknown here: give them the ring's known head as a new full version."""
        head = self.w.state.ring_head(ring).replace(version=self.w.state.floor + 1)
        self._send(ring, head, None, self.w.encode_full(head), note="full head: the broker had lost this ring's head")

    def _rollout_tick(self, due: bool) -> None:
        ro, w = self.rollout, self.w
        if not self.plan_sent:
            self._publish_plan()
        for ring in list(w.force_full):
            if ring == MAIN or ro.phase == "idle":
                self._resend_known(ring)
        if ro.phase == "idle":
            collected = w.first_received_at is None or time.time() - w.first_received_at >= ro.cfg.collect_s
            if w.dirty_samples and due and collected:
                self._start_canary()
            return
        verdict = ro.verdict()
        if verdict.decision == "fail":
            self._rollback("gate", verdict)
        elif verdict.decision == "pass" and ro.phase == "canary":
            if ro.cfg.auto_commit:
                self._commit("gate", verdict)
            else:
                ro.passed_waiting()
                log.info("fleet %s: v%d passed the gate; waiting for an operator's commit", self.name,
                         ro.candidate_version)
                self._publish_status()
        elif time.monotonic() - self.last_status >= STATUS_EVERY_S:
            self._publish_status()

    def _start_canary(self) -> None:
        ro, w = self.rollout, self.w
        ring = ro.cfg.ring
        nxt = self._next_candidate()
        if nxt is None:
            return
        cand, ids, first, figures = nxt
        snapshot = w.state.online.to_bytes()  # the online head the candidate is made from
        delta, full, result = w.encode_for(ring, cand)
        self._send(ring, result, delta, full, len(ids), ids, first, figures)
        ro.started(result, snapshot, figures)
        self._phase_changed()

    def _commit(self, by: str, verdict: GateVerdict) -> dict:
        ro, w = self.rollout, self.w
        cand = w.state.ring_head(ro.cfg.ring)
        if cand.version <= w.state.published.version:  # the main ring was re-sent a newer number meanwhile
            cand = cand.replace(version=w.state.floor + 1)
        delta, full, result = w.encode_for(MAIN, cand)
        if result.sha256 != cand.sha256:  # a delta cannot reproduce the canary's exact weights: send them whole
            delta, full, result = None, w.encode_full(cand), cand
        self._send(MAIN, result, delta, full, note=f"commit of the {ro.cfg.ring} version ({by})")
        rec = ro.committed(by, verdict)
        self._decision(rec)
        return rec

    def _rollback(self, by: str, verdict: GateVerdict) -> dict:
        ro, w = self.rollout, self.w
        ring = ro.cfg.ring
        restore = w.state.published.replace(version=w.state.floor + 1)  # the committed weights, a newer number
        failed = ro.candidate_version
        online, _ = ro.rolled_back(by, verdict)
        self._send(ring, restore, None, w.encode_full(restore),
                   note=f"restores v{w.state.published.version}'s weights (v{failed} rolled back by {by})")
        if online is not None:
            w.state.online = online
            self._take_dirty()  # what they held is quarantined, not learned
        else:  # no evidence either way: keep what was learned, offer it again in the next candidate
            w.dirty_samples = [s["sample_id"] for s in ro.since_commit] or ["(retry)"]
        rec = ro.state.rollout["decisions"][-1]
        self._decision(rec)
        return rec

    def _decision(self, rec: dict) -> None:
        d = GateDecision(fleet=self.name, version=rec["version"], decision=rec["decision"], by=rec["by"],
                         reasons=list(rec["reasons"]), figures=dict(rec["figures"]), observed_s=rec["observed_s"])
        self.host.decisions.append(d)
        if self.host.tracker is not None:
            self.host.tracker.record(d)
        m = self.host.metrics
        if m is not None:
            m.rollouts.labels(self.name, d.decision, d.by).inc()
        self._phase_changed()

    def _phase_changed(self) -> None:
        self._publish_plan()
        self._checkpoint()  # a restarted service resumes the phase
        self._publish_status()

    def _operator(self, action: str, version: Optional[int]) -> dict:
        ro = self.rollout
        if ro is None:
            return {"ok": False, "error": f"fleet {self.name} has no staged rollout"}
        if action not in ("commit", "abort"):
            return {"ok": False, "error": f"unknown rollout command {action!r} (commit or abort)"}
        if ro.phase == "idle":
            return {"ok": False, "error": f"fleet {self.name} has no version under observation"}
        if version is not None and version != ro.candidate_version:
            return {"ok": False, "error": f"v{version} is not the candidate (v{ro.candidate_version} is)"}
        verdict = ro.verdict()
        if action == "commit":
            return {"ok": True, **self._commit("operator", verdict)}
        return {"ok": True, **self._rollback("operator", verdict)}

    def _handle_mqtt_command(self, msg: Message) -> None:
        try:
            if len(msg.payload) > self.config.max_command_bytes:
                raise ValueError(f"command of {len(msg.payload)} bytes exceeds the {self.config.max_command_bytes}-"
                                 "byte limit")
            cmd = json.loads(msg.payload)
            if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str):
                raise ValueError('a command is a JSON object with "command": "commit" | "abort"')
            version = cmd.get("version")
            if version is not None and not isinstance(version, int):
                raise ValueError('"version" must be an integer')
            out = self._operator(cmd["command"], version)
        except ValueError as e:
            out = {"ok": False, "error": short_error(e)}
        log.info("fleet %s: operator command on MQTT: %s", self.name, out.get("decision") or out.get("error"))
        if msg.response_topic:
            self.link.reply(msg, json.dumps(out, default=str))

    # ---- status ---------------------------------------------------------------------------------------
    def _hold_back(self, head: Head, figures: dict, n_samples: int) -> None:
        """A candidate failed the real-face guard: keep learning, publish nothing, say so (log, status, MLflow)."""
        w = self.w
        w.guard.held_back += 1
        log.warning("fleet %s: holding back head v%d (not published): real-face guard: %s; agreement %.3f, "
                    "confident %.3f, pretrained %.3f", w.name, head.version, "; ".join(figures["problems"]),
                    figures["agreement"], figures["agreement_confident"], figures["baseline"])
        pu = PublishedUpdate(fleet=w.name, version=head.version, base_version=w.state.published.version,
                             sha256=head.sha256, delta_bytes=0, full_bytes=0, samples=n_samples,
                             learned_total=w.state.learned, published_at=time.time(),
                             realface_agreement=figures["agreement"],
                             realface_agreement_confident=figures["agreement_confident"], held_back=True)
        self.host.held_back.append(pu)
        if self.host.tracker is not None:
            self.host.tracker.record(pu)
        if self.host.metrics is not None:
            self.host.metrics.held_back.labels(w.name).inc()
        self._publish_status()

    def status(self) -> dict:
        """The retained service status of the fleet: published head, guard, rollout phase and gate figures."""
        w = self.w
        g = w.guard
        return {"fleet": w.name, "published_version": w.state.published.version, "samples_learned": w.state.learned,
                "worker": self.host.worker_id,
                "real_face_guard": None if g is None else {"held_back": g.held_back, "last": g.last,
                                                           "allow_regression": g.allow_regression},
                "rollout": self.rollout.status() if self.rollout is not None else None,
                "timestamp": time.time()}

    def _publish_status(self) -> None:
        self.last_status = time.monotonic()
        try:
            self.link.publish(self.topics.fleet_service_status(self.name), json.dumps(self.status()).encode(),
                              qos=1, retain=True)
        except Exception as e:  # status is best effort; learning and updates go on
            log.debug("fleet %s: service status not published: %s", self.name, e)

    def _publish_plan(self) -> None:
        self.link.publish(self.topics.fleet_rollout(self.name), self.rollout.plan().model_dump_json(), qos=1,
                          retain=True)
        self.plan_sent = True

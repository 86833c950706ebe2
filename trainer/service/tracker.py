"""MLflow logging of an update service's head versions and rollout decisions, batched on its own thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ..tracking import configure_tracking, ensure_experiment
from .config import MlflowConfig

log = logging.getLogger(__name__)


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
    ring: str = "main"                          # the rollout ring it went to ("main": the whole fleet's head)
    note: Optional[str] = None                  # e.g. "commit of the canary version", "restores v3 (v4 failed)"


@dataclass
class GateDecision:
    """A rollout decision on a canary version: commit or roll back, by whom (gate / operator) and on what figures."""

    fleet: str
    version: int
    decision: str          # commit | rollback
    by: str                # gate | operator | timeout
    reasons: list[str]
    figures: dict
    decided_at: float = field(default_factory=time.time)
    observed_s: float = 0.0  # from the canary publish to the decision


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

    def record(self, upd: "PublishedUpdate | GateDecision") -> None:
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
            batch: list = []
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

    def _flush(self, batch: list) -> None:
        from mlflow.entities import Metric, RunTag  # heavy: mlflow, ~1.3 s to import

        if self._client is None:
            self._client = self._connect()
        by_fleet: dict[str, list] = {}
        for u in batch:
            by_fleet.setdefault(u.fleet, []).append(u)
        for fleet, items in by_fleet.items():
            run_id = self._run_for(fleet)
            metrics, tags = [], []
            ups = [u for u in items if isinstance(u, PublishedUpdate)]
            for d in items:
                if isinstance(d, GateDecision):  # a rollout decision and the figures it was made on
                    ts = int(d.decided_at * 1000)
                    metrics.append(Metric("rollout_committed", 1.0 if d.decision == "commit" else 0.0, ts, d.version))
                    metrics += [Metric(f"gate_{k}", float(v), ts, d.version) for k, v in d.figures.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)]
                    tags.append(RunTag(f"rollout.v{d.version}", f"{d.decision} ({d.by}): {'; '.join(d.reasons)}"[:500]))
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
                if u.ring != "main":
                    metrics.append(Metric(f"{u.ring}_head_version", u.version, ts, u.version))
                    continue
                metrics += [Metric("head_version", u.version, ts, u.version),
                            Metric("samples_learned", u.learned_total, ts, u.version),
                            Metric("samples_in_update", u.samples, ts, u.version),
                            Metric("delta_bytes", u.delta_bytes, ts, u.version),
                            Metric("full_bytes", u.full_bytes, ts, u.version)]
            published = [u for u in ups if not u.held_back and u.ring == "main"]
            last = published[-1] if published else None
            for i in range(0, len(metrics), 900):  # MLflow accepts up to 1000 metrics per batch
                self._client.log_batch(run_id, metrics=metrics[i:i + 900])
            if last is not None:
                tags += [RunTag("head_version", str(last.version)), RunTag("head_sha256", last.sha256)]
            if tags:
                self._client.log_batch(run_id, tags=tags[-100:])
            self.logged += len(items)

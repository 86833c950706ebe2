"""Staged rollout of one fleet's head versions: canary phase, health gate, commit or automatic rollback.

One candidate at a time: a new version goes to the canary ring only; the gate judges it from the canary devices'
reported health (device.health: the version against the head it replaced, on the same live faces) and the
rest of the fleet keeps the committed head until the gate (or an operator) commits it. A version that fails is
rolled back: the canary ring gets the committed weights again as a new version number (so the anti-rollback
check of every device keeps the failed version out), the online head returns to the state the committed head
was made from, and what was learned since is written to a quarantine file for review. Learning goes on; the next
candidate starts a new canary phase.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from infantino.runtime.contract.atomic import atomic_write_bytes
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.rollout import RolloutPlan

from ..online_head import OnlineHead
from .config import GateConfig, RolloutConfig

log = logging.getLogger(__name__)

COMMITTED_FILE = "rollout-committed.npz"  # the online head the committed version was made from
CANDIDATE_FILE = "rollout-candidate.npz"  # the online head the candidate was made from
MAX_QUARANTINE = 20_000                   # samples remembered since the last commit (~3 KB each with the embedding)


@dataclass
class GateVerdict:
    """pass | fail | wait, why, and the figures it was judged on."""

    decision: str
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    evidence: bool = True  # False: failed for want of canary reports, not because of what they showed


def judge(gate: GateConfig, version: int, reports: dict[str, dict], elapsed_s: float) -> GateVerdict:
    """The gate on the canary devices' status reports (device id -> status dict with `health`, `last_update`).

    Fails as soon as enough devices report figures over a threshold or too many refuse the version; passes once
    the window has passed with enough evidence and nothing over a threshold; fails at the timeout without enough
    evidence; otherwise waits."""
    running, refused = [], []
    for dev, st in reports.items():
        h = st.get("health") or {}
        if h.get("version") == version:
            running.append((dev, h))
        lu = st.get("last_update") or {}
        if lu.get("version") == version and lu.get("status") == "rejected":
            refused.append(f"{dev} ({lu.get('reason')})")
    evidence = [(d, h) for d, h in running if (h.get("faces") or 0) >= gate.min_faces]
    faces = sum(h["faces"] for _, h in evidence)

    def mean_of(key: str, base: str) -> Optional[float]:
        rows = [(h[key] - h[base], h["faces"]) for _, h in evidence if h.get(key) is not None and h.get(base) is not None]
        n = sum(w for _, w in rows)
        return sum(v * w for v, w in rows) / n if n else None

    changed = [(h["label_changed"], h["faces"]) for _, h in evidence if h.get("label_changed") is not None]
    ratios = sorted(h["fps"] / h["baseline_fps"] for _, h in evidence if h.get("fps") and h.get("baseline_fps"))
    figures = {
        "elapsed_s": round(elapsed_s, 2), "devices_reporting": len(evidence), "devices_running": len(running),
        "devices_refused": len(refused), "faces": faces,
        "entropy_increase": mean_of("entropy", "baseline_entropy"),
        "set_size_increase": mean_of("set_size", "baseline_set_size"),
        "label_change": sum(v * w for v, w in changed) / sum(w for _, w in changed) if changed else None,
        "fps_ratio": ratios[len(ratios) // 2] if ratios else None,
    }
    figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
    problems = []
    if len(refused) > gate.max_rejections:
        problems.append(f"{len(refused)} canary device(s) refused v{version}: {', '.join(refused[:5])}")
    if len(evidence) >= gate.min_devices:
        for key, limit, text in (("entropy_increase", gate.max_entropy_increase, "mean entropy rose by"),
                                 ("set_size_increase", gate.max_set_size_increase, "mean set size grew by"),
                                 ("label_change", gate.max_label_change, "top-1 label changed on a share of")):
            v = figures[key]
            if v is not None and v > limit:
                problems.append(f"{text} {v:.3f} > {limit:g}")
        if figures["fps_ratio"] is not None and figures["fps_ratio"] < gate.min_fps_ratio:
            problems.append(f"frame rate fell to {figures['fps_ratio']:.2f} of before < {gate.min_fps_ratio:g}")
    if problems:
        return GateVerdict("fail", problems, figures)
    if len(evidence) < gate.min_devices:
        if elapsed_s >= gate.timeout_s:
            why = (f"too little evidence after {elapsed_s:.0f} s: {len(evidence)} of {gate.min_devices} canary "
                   f"device(s) saw {gate.min_faces}+ faces with v{version}")
            return GateVerdict("fail", [why], figures, evidence=False)
        return GateVerdict("wait", ["waiting for canary reports"], figures)
    if elapsed_s < gate.window_s:
        return GateVerdict("wait", [f"observing ({elapsed_s:.0f}/{gate.window_s:g} s)"], figures)
    return GateVerdict("pass", [], figures)


class Rollout:
    """The rollout phase of one fleet (idle -> canary -> passed?) and what commit and rollback change in it.

    The phase lives in `FleetState.rollout` (checkpointed with the fleet); the online heads a candidate and the
    committed version were made from are saved beside it, so a restarted service resumes the phase.
    """

    def __init__(self, cfg: RolloutConfig, fleet: str, state):
        self.cfg = cfg
        self.fleet = fleet
        self.state = state
        self.dir: Path = state.dir
        self.reports: dict[str, dict] = {}          # canary device -> its last status (health, last_update)
        self.since_commit: list[dict] = []          # samples learned since the committed snapshot
        self.candidate_mark = 0                     # len(since_commit) when the candidate was made
        self.last_verdict: GateVerdict | None = None
        r = state.rollout
        r.setdefault("phase", "idle")
        r.setdefault("failed", [])
        r.setdefault("decisions", [])
        # the online-head states (state-file bytes) the committed version and the candidate were made from
        self.committed_state = self._load(COMMITTED_FILE)
        if self.committed_state is None:  # first start with a rollout: the committed head is the current state's
            self.committed_state = state.online.to_bytes()
            atomic_write_bytes(self.dir / COMMITTED_FILE, self.committed_state)
        self.candidate_state = self._load(CANDIDATE_FILE) if r["phase"] != "idle" else None
        self.members = RolloutPlan(fleet=fleet, ring=cfg.ring, devices=list(cfg.devices), percent=cfg.percent)

    def _load(self, name: str) -> bytes | None:
        """A saved state file's bytes, checked now (an unreadable one fails the start, not a later rollback)."""
        path = self.dir / name
        if not path.exists():
            return None
        data = path.read_bytes()
        OnlineHead.from_bytes(data, source=path)
        return data

    @property
    def phase(self) -> str:
        return self.state.rollout["phase"]

    @property
    def candidate_version(self) -> Optional[int]:
        return (self.state.rollout.get("candidate") or {}).get("version")

    def plan(self) -> RolloutPlan:
        """The retained plan devices read (membership, plus the versions for people watching the topic)."""
        return self.members.model_copy(update={"candidate_version": self.candidate_version,
                                               "committed_version": self.state.published.version})

    def is_canary(self, device: str) -> bool:
        return self.members.ring_of(device) is not None

    # ---- samples ---------------------------------------------------------------------------------
    def learned(self, sample: SampleMessage) -> None:
        """Remember a learned sample until it is committed (a rollback writes it to the quarantine file)."""
        if len(self.since_commit) < MAX_QUARANTINE:
            self.since_commit.append(sample.model_dump(exclude_none=True))
        elif len(self.since_commit) == MAX_QUARANTINE:
            self.since_commit.append({"sample_id": "(more)", "note": f"over {MAX_QUARANTINE} samples since the "
                                      "last commit: later ones are not listed"})
            log.warning("fleet %s: over %d samples since the last commit; a quarantine file would list the first %d",
                        self.fleet, MAX_QUARANTINE, MAX_QUARANTINE)

    # ---- phases ----------------------------------------------------------------------------------
    def started(self, candidate: Head, online_state: bytes, realface: Optional[dict] = None) -> None:
        """The candidate (made from `online_state`, the online head's state file bytes) went to the canary ring:
        observe it from now on. `realface`: the real-face guard's figures of the candidate (reported with the gate's)."""
        self.candidate_state = online_state
        atomic_write_bytes(self.dir / CANDIDATE_FILE, online_state)
        self.candidate_mark = len(self.since_commit)
        self.state.rollout.update(phase="canary", candidate={"version": candidate.version, "sha256": candidate.sha256},
                                  started_at=time.time(),
                                  realface_agreement=(realface or {}).get("agreement"))
        log.info("fleet %s: canary phase for v%d (ring %s)", self.fleet, candidate.version, self.cfg.ring)

    def verdict(self, now: float | None = None) -> GateVerdict:
        elapsed = (now or time.time()) - float(self.state.rollout.get("started_at") or time.time())
        v = judge(self.cfg.gate, self.candidate_version, self.reports, elapsed)
        if self.state.rollout.get("realface_agreement") is not None:  # passed the real-face guard to get here
            v.figures["realface_agreement"] = self.state.rollout["realface_agreement"]
        self.last_verdict = v
        return v

    def committed(self, by: str, verdict: GateVerdict) -> dict:
        """The candidate is now the whole fleet's head: its online snapshot becomes the committed one."""
        if self.candidate_state is not None:
            self.committed_state = self.candidate_state
            os.replace(self.dir / CANDIDATE_FILE, self.dir / COMMITTED_FILE)
        self.candidate_state = None
        self.since_commit = self.since_commit[self.candidate_mark:]
        self.candidate_mark = 0
        return self._decided("commit", by, verdict)

    def rolled_back(self, by: str, verdict: GateVerdict) -> tuple[OnlineHead | None, Path | None]:
        """The candidate failed: (the online head to continue from, the quarantine file of what was learned since
        the commit). The failed version stays in `failed` (devices' anti-rollback check keeps it out). Without
        evidence (no canary reported in time) nothing learned is judged bad: (None, None), learning is kept and
        the next candidate carries it again."""
        version = self.candidate_version
        path = None
        if not verdict.evidence:
            self.state.rollout["failed"] = (self.state.rollout["failed"] + [version])[-100:]
            self.candidate_state = None
            self._decided("rollback", by, verdict)
            return None, None
        if self.since_commit:
            path = self.dir / "quarantine" / f"v{version}.jsonl"
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, "".join(json.dumps(s) + "\n" for s in self.since_commit).encode())
            log.warning("fleet %s: %d samples learned since the last commit are quarantined in %s (not learned; "
                        "review them, then send them again if they are right)", self.fleet, len(self.since_commit),
                        path)
        self.since_commit, self.candidate_mark = [], 0
        self.state.rollout["failed"] = (self.state.rollout["failed"] + [version])[-100:]
        self.candidate_state = None
        try:
            (self.dir / CANDIDATE_FILE).unlink()
        except FileNotFoundError:
            pass
        self._decided("rollback", by, verdict, quarantined=str(path) if path else None)
        return OnlineHead.from_bytes(self.committed_state), path

    def passed_waiting(self) -> None:
        self.state.rollout["phase"] = "passed"

    def _decided(self, decision: str, by: str, verdict: GateVerdict, **extra) -> dict:
        r = self.state.rollout
        started = float(r.get("started_at") or time.time())
        rec = {"version": self.candidate_version, "decision": decision, "by": by, "reasons": verdict.reasons,
               "figures": verdict.figures, "observed_s": round(time.time() - started, 2), "at": time.time(), **extra}
        r["decisions"] = (r["decisions"] + [rec])[-20:]
        r.update(phase="idle", candidate=None, started_at=None)
        log.log(logging.INFO if decision == "commit" else logging.WARNING, "fleet %s: v%s %s by %s after %.1f s%s",
                self.fleet, rec["version"], "committed" if decision == "commit" else "ROLLED BACK", by,
                rec["observed_s"], f": {'; '.join(verdict.reasons)}" if verdict.reasons else "")
        return rec

    def status(self) -> dict:
        """The rollout part of the fleet's service status (retained, and the fleet page)."""
        r = self.state.rollout
        v = self.last_verdict
        return {"ring": self.cfg.ring, "canary_devices": list(self.cfg.devices), "canary_percent": self.cfg.percent,
                "phase": r["phase"], "candidate_version": self.candidate_version,
                "committed_version": self.state.published.version, "failed_versions": r["failed"][-10:],
                "gate": None if v is None or r["phase"] == "idle" else {"decision": v.decision, "reasons": v.reasons,
                                                                        "figures": v.figures},
                "last_decision": r["decisions"][-1] if r["decisions"] else None,
                "auto_commit": self.cfg.auto_commit}

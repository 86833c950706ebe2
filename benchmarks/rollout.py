"""Staged rollout on a loopback fleet (benchmarks.fleetsim): rounds of a good label stream and a poisoned burst;
for each, time-to-commit (first sample sent -> gate commits -> every device holds the version) or time-to-rollback
(first sample -> gate rolls back -> every canary device holds the committed weights again), the gate's figures,
and whether a failed version ever reached a device outside the canary ring."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from infantino.benchmarks.broker import MosquittoBroker
from infantino.benchmarks.fleetsim import SimFleet
from infantino.benchmarks.timing import wait_until
from infantino.runtime.configfile import validate_config
from infantino.runtime.mqtt import BrokerConfig
from infantino.trainer.service import TrainerServiceConfig, UpdateService


def measure_rollout(devices: int = 20, canary: int = 3, rounds: int = 3, good: int = 100, poison: int = 200,
                    workdir: str | Path | None = None, progress: Callable[[str], None] = lambda s: None) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-rollout-"))
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    bcfg = BrokerConfig(host=broker.host, port=broker.port, client_id=f"unused-{uuid.uuid4().hex[:4]}")
    fleet = SimFleet(work / "fleet", bcfg, devices=devices, canary=canary)
    cfg = fleet.service_config(rollout={"collect_s": 2.0})
    svc = UpdateService(validate_config(TrainerServiceConfig, cfg)).start()
    rows = []
    try:
        fleet.start()
        if not wait_until(lambda: svc.ready and fleet.wait_connected(0.1)
                          and sum(r is not None for r in fleet.rings().values()) == canary, 60):
            raise RuntimeError("the simulated fleet did not come up")
        unit = svc.unit(fleet.fleet)
        canary_ids = set(fleet.canary_ids)
        for r in range(rounds):
            for kind in ("good", "poison"):
                n_dec = len(svc.decisions)
                progress(f"round {r + 1}/{rounds}: {kind} stream")
                t0 = time.time()
                fleet.send(good if kind == "good" else poison, poison=kind == "poison")
                if not wait_until(lambda: len(svc.decisions) > n_dec, 180):
                    rows.append({"round": r + 1, "stream": kind, "decision": None, "error": "no decision in 180 s"})
                    continue
                d = list(svc.decisions)[n_dec]
                if d.decision == "commit":
                    wait_until(lambda: set(fleet.versions().values()) == {d.version}, 60)
                    reached = max(a.at for a in fleet.applied if a.version == d.version)
                    outside = set()
                else:
                    restore = unit.w.state.canary
                    wait_until(lambda: all(dd.pipeline.head.sha256 == restore.sha256 for dd in fleet.daemons
                                           if dd.config.device_id in canary_ids), 60)
                    reached = max(a.at for a in fleet.applied if a.version == restore.version)
                    outside = fleet.ever_ran(d.version) - canary_ids
                rows.append({"round": r + 1, "stream": kind, "decision": d.decision, "by": d.by,
                             "version": d.version, "reasons": d.reasons, "gate": d.figures,
                             "observed_s": d.observed_s, "decided_after_s": round(d.decided_at - t0, 2),
                             "fleet_holds_result_after_s": round(reached - t0, 2),
                             "failed_version_outside_canary": sorted(outside)})
                progress(str(rows[-1]))
                wait_until(lambda: unit.rollout.phase == "idle" and not unit.w.dirty_samples, 60)
    finally:
        fleet.stop()
        svc.stop()
        broker.kill()
    commits = [x for x in rows if x.get("decision") == "commit"]
    backs = [x for x in rows if x.get("decision") == "rollback"]
    return {"devices": devices, "canary": canary, "rows": rows,
            "good_committed": sum(x["stream"] == "good" for x in commits),
            "poison_rolled_back": sum(x["stream"] == "poison" for x in backs), "rounds": rounds,
            "time_to_commit_s": sorted(x["fleet_holds_result_after_s"] for x in commits),
            "time_to_rollback_s": sorted(x["fleet_holds_result_after_s"] for x in backs),
            "gate": {k: v for k, v in validate_config(TrainerServiceConfig, cfg).fleets[0].rollout.gate}}

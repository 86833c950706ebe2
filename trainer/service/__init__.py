"""The cloud side of online learning: labelled samples in (MQTT), signed head updates out, versions in MLflow.

Modules: `config` (trainer.yaml), `state` (durable fleet state: version record + checkpoint), `fleet` (learning
and update building), `guard` (real-face guard), `rollout` (canary ring, health gate, commit/rollback), `unit`
(one fleet's MQTT session and loop), `ownership` (which worker serves which fleet), `tracker` (MLflow),
`service` (the process). Crash safety, per fleet:
- before a version is published, its number and sha256 are written to a small durable record (`published.rec`,
  one fdatasync); a restarted or taking-over worker numbers its next update above it, so no version number is
  ever published twice with different weights;
- the full state is checkpointed every `checkpoint_every` samples / `checkpoint_s` seconds and at stop; samples are
  acknowledged to the broker (manual PUBACK) only after the checkpoint that includes them, so a crash makes the
  broker redeliver them (to whichever worker resumes the fleet's session) rather than lose them;
- after every (re)connect the broker's retained head of each ring is checked and adopted when newer.
"""

from .config import (FleetConfig, GateConfig, MlflowConfig, RolloutConfig, TrainerServiceConfig, WorkersConfig,
                     load_service_config)
from .fleet import FleetWorker
from .guard import FleetGuard
from .rollout import GateVerdict, Rollout, judge
from .service import UpdateService
from .state import INTENT_FILE, MAIN, STATE_FILE, FleetState, VersionRecord
from .tracker import GateDecision, PublishedUpdate, VersionTracker
from .unit import FleetUnit

__all__ = ["FleetConfig", "GateConfig", "MlflowConfig", "RolloutConfig", "TrainerServiceConfig", "WorkersConfig",
           "load_service_config", "FleetWorker", "FleetGuard", "GateVerdict", "Rollout", "judge", "UpdateService",
           "INTENT_FILE", "MAIN", "STATE_FILE", "FleetState", "VersionRecord", "GateDecision", "PublishedUpdate",
           "VersionTracker", "FleetUnit"]

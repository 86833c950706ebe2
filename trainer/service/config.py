"""trainer.yaml for `infantino-train serve`: fleets, rollout rings and gate, workers, MLflow, web (pydantic)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infantino.runtime.configfile import ExistingFile, ExistingPath, WritableDir, load_yaml_config
from infantino.runtime.contract.rollout import CANARY
from infantino.runtime.contract.topics import TOPIC_LEVEL
from infantino.runtime.mqtt import BrokerConfig

from ..web.config import ServiceWebConfig



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Strict):
    """When a canary version may go to the whole fleet: judged from what canary devices report on live frames
    (device.health: the version against the head it replaced, on the same faces), never from images."""

    window_s: float = Field(20.0, ge=0, le=86400, description="observe the canary ring at least this long")
    timeout_s: float = Field(120.0, gt=0, le=7 * 86400, description="no verdict (too little evidence) by then: "
                             "roll back")
    min_devices: int = Field(1, ge=1, description="canary devices that must report the version")
    min_faces: int = Field(30, ge=1, description="faces each of those devices must have seen with it")
    max_entropy_increase: float = Field(0.25, ge=0, description="mean prediction entropy (nats) may rise this much "
                                        "over the replaced head's on the same faces")
    max_set_size_increase: float = Field(0.5, ge=0, description="mean conformal set size may grow this much")
    max_label_change: float = Field(0.3, ge=0, le=1, description="share of faces whose top-1 label changed")
    min_fps_ratio: float = Field(0.7, ge=0, le=1, description="frame rate may fall to this share of the one before")
    max_rejections: int = Field(0, ge=0, description="canary devices that may refuse the version")


class RolloutConfig(_Strict):
    """Staged rollout: a new version goes to the canary ring, is judged by the gate, then committed to the whole
    fleet or rolled back (the canary ring returns to the committed weights; learning since the commit is
    quarantined)."""

    enabled: bool = True
    ring: str = Field(CANARY, description="the canary ring's name (an MQTT topic level)")
    devices: list[str] = Field(default_factory=list, description="canary devices by id")
    percent: float = Field(0.0, ge=0, le=100, description="plus this share of the fleet, chosen by a stable hash "
                           "of fleet and device id (the same across restarts)")
    collect_s: float = Field(2.0, ge=0, le=3600, description="a candidate is made this long after the first sample "
                             "learned since the last one (a burst of labels lands in one candidate)")
    auto_commit: bool = Field(True, description="commit a version that passes the gate (else wait for an "
                              "operator's commit)")
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _some_canary(self):
        if self.enabled and not self.devices and self.percent <= 0:
            raise ValueError("rollout needs a canary ring: list devices (devices: [cam-01]) or set percent > 0")
        if not TOPIC_LEVEL.match(self.ring) or self.ring == "main":
            raise ValueError(f"ring must be a topic level other than 'main', got {self.ring!r}")
        return self


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
    rollout: Optional[RolloutConfig] = Field(None, description="staged rollout (canary ring + health gate); "
                                             "without it every version goes to every device at once")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bundle is None) == (self.initial_head is None):
            raise ValueError("give either bundle (the fleet's bundle) or initial_head (its head.infh), exactly one")
        if self.devices is None and not self.allow_any_device:
            raise ValueError(f"fleet {self.name}: list its devices (devices: [cam-01, ...]) or set "
                             "allow_any_device: true (any device could then train this fleet's head)")
        if self.rollout is not None and self.rollout.enabled and self.devices is not None:
            unknown = sorted(set(self.rollout.devices) - set(self.devices))
            if unknown:
                raise ValueError(f"fleet {self.name}: canary devices not listed in the fleet: {', '.join(unknown)}")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOPIC_LEVEL.match(v):
            raise ValueError(f"fleet name must be letters, digits, '.', '_' or '-' (an MQTT topic level), got {v!r}")
        return v

    @property
    def staged(self) -> bool:
        return self.rollout is not None and self.rollout.enabled


class MlflowConfig(_Strict):
    enabled: bool = True
    tracking_uri: Optional[str] = Field(None, description="default: trainer.tracking's (sqlite:///mlflow.db)")
    experiment: str = "infantino-online"
    flush_s: float = Field(5.0, gt=0, description="log head versions in batches at most this often")


class WorkersConfig(_Strict):
    """Several `infantino-train serve` processes sharing `state_dir` (shared storage): each fleet is owned by
    one worker at a time (a lock on its state folder); fleets are spread evenly and taken over when a worker dies."""

    worker_id: Optional[str] = Field(None, description="this worker's name (default: host-pid-random)")
    rebalance_s: float = Field(2.0, gt=0, le=300, description="look for free fleets and rebalance this often")

    @field_validator("worker_id")
    @classmethod
    def _wid(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not TOPIC_LEVEL.match(v):
            raise ValueError(f"worker_id must be 1-64 letters, digits, '.', '_' or '-' (a file name), got {v!r}")
        return v

    def resolved_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class TrainerServiceConfig(_Strict):
    """`infantino-train serve` settings (trainer.yaml); relative paths resolve against the file's folder."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    topic_prefix: str = "infantino"
    service_id: str = Field("infantino-trainer", description="MQTT client id stem: each fleet's persistent session "
                            "is `<service_id>.<fleet>`, whichever worker owns the fleet (keep it stable)")
    fleets: list[FleetConfig] = Field(..., min_length=1)
    state_dir: WritableDir = Field(..., description="service state, one sub-folder per fleet (shared storage "
                                   "when several workers serve)")
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
    max_command_bytes: int = Field(4096, ge=256, le=1 << 20, description="larger operator commands are refused")
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
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

    def client_id(self, fleet: str) -> str:
        """The MQTT client id of a fleet's session (the same on every worker: a takeover resumes the session)."""
        return f"{self.broker.client_id or self.service_id}.{fleet}"


def load_service_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainerServiceConfig:
    return load_yaml_config(TrainerServiceConfig, path, overrides)

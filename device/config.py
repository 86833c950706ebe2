"""The device daemon's configuration (device.yaml), validated at start with one clear line per bad field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infantino.runtime.configfile import ExistingFile, ExistingPath, WritableDir, load_yaml_config
from infantino.runtime.face import FaceOptions
from infantino.runtime.mqtt import BrokerConfig
from infantino.runtime.contract.signing import TrustedKeys, load_public_key

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _topic_safe(v: str, what: str) -> str:
    if not TOPIC_SAFE.match(v):
        raise ValueError(f"{what} must be 1-64 characters of letters, digits, '.', '_' or '-' "
                         f"(it becomes an MQTT topic level), got {v!r}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraConfig(_Strict):
    """Where frames come from (runtime.sources.open_source spec) and when to reopen a stalled source."""

    source: Union[int, str] = Field(..., description="camera index, video file, http/rtsp URL or image folder")
    stall_timeout_s: float = Field(5.0, gt=0, description="reopen the source when no frame came for this long")
    reopen_delay_s: float = Field(1.0, ge=0, description="pause before reopening a failed/ended source")
    reopen_on_end: bool = Field(True, description="reopen when the source ends (loops a video file)")
    fps: Optional[float] = Field(None, gt=0, le=1000, description="pace the source to at most this many frames/s "
                                 "(a video file or folder plays in real time; a camera is asked for this rate)")

    @field_validator("source")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("source must not be empty")
        if isinstance(v, int) and v < 0:
            raise ValueError("a camera index must be >= 0")
        return v


class PublishConfig(_Strict):
    """How often predictions and status go out."""

    predictions: bool = True
    predictions_qos: Literal[0, 1] = 0
    predictions_max_hz: float = Field(5.0, gt=0, le=1000, description="at most this many prediction messages/s")
    predictions_heartbeat_s: float = Field(5.0, gt=0, description="publish at least this often even without change")
    status_interval_s: float = Field(10.0, gt=0, description="retained status every N seconds (and on events)")


class OtaConfig(_Strict):
    """Head updates."""

    public_key: Optional[ExistingFile] = Field(None, description="key that signs head updates (default: public_key)")
    extra_keys: list[ExistingFile] = Field(default_factory=list, description="more keys whose updates are accepted "
                                           "(key rotation: add the new key here, then retire the old one)")
    revoked_keys: list[str] = Field(default_factory=list, description="sha256 fingerprints (infantino-compile "
                                    "keygen prints them) of keys whose updates are refused even if listed above")
    max_update_bytes: int = Field(4 << 20, ge=1024, le=256 << 20, description="larger update messages are refused "
                                  "before anything is parsed")
    max_command_bytes: int = Field(16 << 10, ge=256, le=1 << 20, description="larger command messages are refused")
    follow_full_head: bool = Field(False, description="stay subscribed to the retained full head (else only "
                                   "at connect and after a missed delta, deltas otherwise)")


class DeviceConfig(_Strict):
    """Everything `infantino-device run` needs; relative paths resolve against the config file's folder."""

    device_id: str
    fleet: str
    topic_prefix: str = "infantino"
    bundle: ExistingPath = Field(..., description="bundle directory or .tar (compiler output)")
    public_key: ExistingFile = Field(..., description="Ed25519 public key that signs the bundle (and updates)")
    backend: str = Field("auto", description="inference backend: auto, onnxruntime, tflite, tensorrt")
    threads: Optional[int] = Field(None, ge=1, le=64)
    face: FaceOptions = Field(default_factory=FaceOptions)
    camera: CameraConfig
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    state_dir: WritableDir = Field(..., description="current/previous head and journal")
    label_buffer_frames: int = Field(300, ge=1, le=100000, description="recent frames whose embeddings can "
                                     "be labelled")
    errors_kept: int = Field(10, ge=1, le=1000, description="recent errors shown in the status message")

    @field_validator("device_id")
    @classmethod
    def _dev(cls, v: str) -> str:
        return _topic_safe(v, "device_id")

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        return _topic_safe(v, "fleet")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"topic_prefix must be a plain topic path without wildcards or outer '/', got {v!r}")
        return v

    @model_validator(mode="after")
    def _client_id(self):
        if self.broker.client_id is None:
            self.broker.client_id = f"infantino-device-{self.device_id}"
        return self

    @property
    def update_key_path(self) -> Path:
        return Path(self.ota.public_key or self.public_key)

    def update_keys(self) -> TrustedKeys:
        """The keys updates may be signed with: the update key plus ota.extra_keys, minus ota.revoked_keys."""
        paths = [self.update_key_path, *self.ota.extra_keys]
        return TrustedKeys([load_public_key(p) for p in paths], revoked=self.ota.revoked_keys)


def load_device_config(path: str | os.PathLike, overrides: dict | None = None) -> DeviceConfig:
    """Read and validate device.yaml; ConfigError lists every bad field by its dotted path."""
    return load_yaml_config(DeviceConfig, path, overrides)

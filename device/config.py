"""The device daemon's configuration (device.yaml), validated at start with one clear line per bad field."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infantino.runtime.configfile import ExistingFile, ExistingPath, WritableDir, load_yaml_config
from infantino.runtime.face import FaceOptions
from infantino.runtime.mqtt import BrokerConfig
from infantino.runtime.contract.signing import TrustedKeys, load_public_key
from infantino.runtime.contract.topics import TOPIC_LEVEL

TOPIC_SAFE = TOPIC_LEVEL


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
    canary_status_interval_s: float = Field(2.0, gt=0, description="... this often while the device is in its "
                                            "fleet's canary ring (the rollout gate judges a version by it)")
    max_plan_bytes: int = Field(256 << 10, ge=1024, le=16 << 20, description="larger rollout plans are refused")


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


WEB_TOKEN_ENV = "INFANTINO_WEB_TOKEN"
WEB_OPERATOR_TOKEN_ENV = "INFANTINO_WEB_OPERATOR_TOKEN"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (the only binds that may run without a token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(_Strict):
    """The device's web page and HTTP API (device/web), served by `infantino-device run` when enabled.

    Tokens come from a file (first line) or an environment variable; any bind other than loopback needs one.
    TLS is left to a reverse proxy in front (docs/device.md has an nginx and a Caddy example).
    """

    enabled: bool = False
    bind: str = Field("127.0.0.1", description="address to listen on; anything but loopback needs a token")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port)")
    token_file: Optional[ExistingFile] = Field(None, description=f"token for the page and API (or ${WEB_TOKEN_ENV})")
    operator_token_file: Optional[ExistingFile] = Field(None, description="token that may also roll the head back "
                                                        f"(or ${WEB_OPERATOR_TOKEN_ENV})")
    live_max_fps: float = Field(5.0, gt=0, le=30, description="the live view is encoded at most this often, and "
                                "only while a page polls it")
    live_max_width: int = Field(960, ge=160, le=4096, description="wider frames are scaled down for the live view")
    jpeg_quality: int = Field(80, ge=30, le=95)
    undo_window_s: float = Field(10.0, ge=0, le=120, description="a label from the page is held this long before "
                                 "it is sent, so that Undo really keeps it from being learned")
    max_upload_bytes: int = Field(8 << 20, ge=1024, le=64 << 20, description="larger /v1/predict bodies get 413")
    max_pixels: int = Field(4096 * 4096, ge=64 * 64, le=8192 * 8192, description="larger images are refused")

    def tokens(self) -> tuple[Optional[str], Optional[str]]:
        """(token, operator token) from their files, else from the environment; None where not configured."""
        return (_read_token(self.token_file, WEB_TOKEN_ENV), _read_token(self.operator_token_file,
                                                                         WEB_OPERATOR_TOKEN_ENV))

    @model_validator(mode="after")
    def _token_off_loopback(self):
        if self.enabled and not is_loopback(self.bind) and not any(self.tokens()):
            raise ValueError(f"bind {self.bind!r} is not loopback: set token_file (or ${WEB_TOKEN_ENV}) so that "
                             "not everyone on the network can see the camera")
        return self


def _read_token(path: Optional[Path], env: str) -> Optional[str]:
    if path is not None:
        lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
        token = lines[0].strip() if lines else ""
        if len(token) < 8:
            raise ValueError(f"{path}: the token must be at least 8 characters")
        return token
    token = os.environ.get(env, "").strip()
    if token and len(token) < 8:
        raise ValueError(f"${env}: the token must be at least 8 characters")
    return token or None


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
    web: WebConfig = Field(default_factory=WebConfig)

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

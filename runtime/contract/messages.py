"""JSON messages on the MQTT topics (samples, predictions, status, commands) as typed models."""

from __future__ import annotations

import math
import time
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .classes import CLASSES


MAX_EMBEDDING = 4096  # floats in a sample's embedding (the default extractor gives 64)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SampleMessage(_Msg):
    """A labelled embedding for online learning; images never leave the device.

    `label` is one class, or `labels` several annotators' labels (combined by the trainer), or `soft_label`
    a probability per class.
    """

    device_id: str = Field(max_length=128)
    fleet: str = Field(max_length=64)
    sample_id: str = Field(max_length=200, description="unique per device; the trainer drops repeats (QoS1 "
                           "redelivery)")
    embedding: list[float] = Field(max_length=MAX_EMBEDDING)
    extractor_id: str = Field(max_length=128)
    label: Optional[str] = Field(None, max_length=64)
    labels: Optional[list[str]] = Field(None, max_length=64)
    soft_label: Optional[dict[str, float]] = Field(None, max_length=64)
    annotator: Optional[str] = Field(None, max_length=200)
    confidence: Optional[float] = Field(None, ge=0.0, le=1.0, description="the annotator's confidence in [0, 1]; "
                                        "the sample's weight in learning")
    frame_id: Optional[int] = None
    head_version: Optional[int] = None
    timestamp: float = Field(default_factory=time.time)

    @field_validator("embedding")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if not v or not all(math.isfinite(x) for x in v):
            raise ValueError("embedding must be a non-empty list of finite numbers")
        return v

    @field_validator("label")
    @classmethod
    def _known_label(cls, v):
        if v is not None and v not in CLASSES:
            raise ValueError(f"unknown label {v!r}; valid: {', '.join(CLASSES)}")
        return v


class FacePrediction(_Msg):
    box: tuple[int, int, int, int]
    label: str
    probabilities: dict[str, float]
    entropy: float
    prediction_set: list[str]


class PredictionMessage(_Msg):
    device_id: str
    frame_id: int
    timestamp: float
    head_version: int
    faces: list[FacePrediction]


class HeadHealth(_Msg):
    """How the running head behaves on live frames, next to the head it replaced run on the same faces (a shadow):
    what the update service's rollout gate judges a canary version by. Means are per face since the swap; every
    figure finite and non-negative (a NaN would slip through the gate's comparisons)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    version: int
    baseline_version: Optional[int] = None
    since: float = Field(description="when this head was swapped in (epoch s)")
    faces: int = Field(0, ge=0)
    entropy: Optional[float] = Field(None, ge=0)
    baseline_entropy: Optional[float] = Field(None, ge=0)
    set_size: Optional[float] = Field(None, ge=0)
    baseline_set_size: Optional[float] = Field(None, ge=0)
    label_changed: Optional[float] = Field(None, ge=0, le=1, description="share of faces whose top-1 differs from "
                                           "the baseline's")
    fps: Optional[float] = Field(None, ge=0)
    baseline_fps: Optional[float] = Field(None, ge=0)
    latency_ms: Optional[float] = Field(None, ge=0)
    baseline_latency_ms: Optional[float] = Field(None, ge=0)


class StatusMessage(_Msg):
    device_id: str
    state: Literal["online", "offline"]
    timestamp: float = Field(default_factory=time.time)
    head_version: Optional[int] = None
    head_sha256: Optional[str] = None
    bundle_id: Optional[str] = None
    backend: Optional[str] = None
    fps: Optional[float] = None
    latency_ms: dict[str, float] = {}
    frames: int = 0
    dropped_frames: int = 0
    errors: list[str] = []
    last_update: Optional[dict] = None
    # added by the device daemon (issue 7): update rejections by reason, rollback target, camera state
    rejections: dict[str, int] = {}
    previous_head_version: Optional[int] = None
    camera: Optional[str] = None
    uptime_s: Optional[float] = None
    samples_sent: int = 0
    last_face_frame_id: Optional[int] = None  # newest frame with a face that `label` can still use
    # staged rollout (issue 14): the device's fleet and ring, and its head's health on live frames
    fleet: Optional[str] = None
    ring: Optional[str] = None
    health: Optional[HeadHealth] = None


class CommandMessage(_Msg):
    command: Literal["request-full-head", "rollback", "snapshot", "label"]
    label: Optional[str] = Field(None, max_length=64)
    labels: Optional[list[str]] = Field(None, max_length=7, description="several labels for an ambiguous face")
    frame_id: Optional[int] = None
    annotator: Optional[str] = Field(None, max_length=200)
    request_id: Optional[str] = Field(None, max_length=200)

"""Typed responses and requests of the device's HTTP API (they are also its OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infantino.runtime.contract.classes import CLASSES


class FaceOut(BaseModel):
    """One face: box (x, y, w, h) in frame pixels, top label, probabilities, conformal prediction set."""

    index: int
    box: tuple[int, int, int, int]
    label: str
    probabilities: dict[str, float]
    prediction_set: list[str]
    entropy: float


class LiveFrameOut(BaseModel):
    """The newest frame the live view encoded; its JPEG is at `jpeg_url` (while it is among the last few)."""

    frame_id: int
    timestamp: float
    width: int
    height: int
    head_version: Optional[int]
    faces: list[FaceOut]
    jpeg_url: str


class PredictOut(BaseModel):
    """What the running head says about an uploaded image (not kept, so it cannot be labelled)."""

    width: int
    height: int
    head_version: int
    faces: list[FaceOut]
    timings_ms: dict[str, float] = Field(description="decode, detect, preprocess, embed, head, wait (for the "
                                         "camera loop's frame in progress) and total")


class LabelIn(BaseModel):
    """Label a face of a recent frame: `label`, or `labels` (several) when the expression is ambiguous."""

    model_config = ConfigDict(extra="forbid")
    label: Optional[str] = Field(None, description=f"one of {', '.join(CLASSES)}")
    labels: Optional[list[str]] = Field(None, min_length=1, max_length=len(CLASSES))
    frame_id: Optional[int] = Field(None, description="default: the newest frame with a face")
    face: Optional[int] = Field(None, ge=0, description="the face's index in that frame (default: the largest)")
    annotator: Optional[str] = Field(None, max_length=200)
    undoable: bool = Field(True, description="hold the sample for the undo window before it is sent")

    @model_validator(mode="after")
    def _one(self):
        if (self.label is None) == (self.labels is None):
            raise ValueError("give either label or labels")
        return self

    @property
    def all_labels(self) -> list[str]:
        return [self.label] if self.label is not None else list(self.labels or [])


class SampleOut(BaseModel):
    """A labelled sample and where it is: held (undo possible) -> sent -> acked by the broker; or undone."""

    sample_id: str
    state: Literal["held", "sending", "sent", "acked", "refused", "undone"]
    frame_id: Optional[int] = None
    label: Optional[str] = None
    labels: Optional[list[str]] = None
    annotator: Optional[str] = None
    head_version: Optional[int] = Field(None, description="the head that predicted the labelled frame")
    created_at: float
    publish_at: float
    sent_at: Optional[float] = None
    head_version_at_send: Optional[int] = None


class LabelOut(BaseModel):
    sample_id: str
    frame_id: int
    face: int
    labels: list[str]
    predicted: str
    state: str
    publish_at: float
    undo_window_s: float


class UndoOut(BaseModel):
    sample_id: str
    undone: bool


class HeadEvent(BaseModel):
    """One line of the head journal: an update applied, an update rejected (with its reason), a rollback."""

    time: float
    event: str
    version: Optional[int] = None
    kind: Optional[str] = None
    base_version: Optional[int] = None
    source: Optional[str] = None
    reason: Optional[str] = None
    message: Optional[str] = None
    from_version: Optional[int] = None
    sha256: Optional[str] = None


class HeadsOut(BaseModel):
    head_version: int
    head_sha256: str
    previous_version: Optional[int]
    blocked_up_to: int = Field(description="after a rollback, updates up to this version are refused")
    applied: int
    rollbacks: int
    rejections: dict[str, int]
    events: list[HeadEvent] = Field(description="newest first")


class RollbackOut(BaseModel):
    ok: bool
    message: str
    head_version: Optional[int]


class WebInfo(BaseModel):
    live_max_fps: float
    undo_window_s: float
    auth: Literal["none", "token"]
    role: Literal["user", "operator"]
    classes: list[str]


class Snapshot(BaseModel):
    """Everything the status page and /metrics read, taken at one moment."""

    device_id: str
    fleet: str
    head_version: Optional[int]
    head_sha256: Optional[str]
    previous_head_version: Optional[int]
    bundle_id: Optional[str]
    backend: Optional[str]
    fps: float
    latency_ms: dict[str, float]
    latency_histograms: dict[str, tuple[list[int], float]]  # stage -> (per-bucket counts incl. +Inf, sum ms)
    frames: int
    dropped_frames: int
    faces: int
    camera: str
    camera_reopens: int
    broker: str
    broker_connected: bool
    uptime_s: float
    samples_sent: int
    samples_held: int
    samples_undone: int
    updates_applied: int
    rollbacks: int
    rejections: dict[str, int]
    last_update: Optional[dict]
    last_update_at: Optional[float]
    errors: list[str] = Field(default_factory=list)


class StatusOut(Snapshot):
    """The daemon's status (what its retained MQTT status says, and more) plus what only the page needs."""

    web: WebInfo

"""The one interface between the web app and the daemon: DeviceView. DaemonView implements it over a running
DeviceDaemon by calling its public, thread-safe methods; the web app never touches the daemon's threads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from infantino.runtime.pipeline import FaceResult

from .models import Snapshot


@dataclass(frozen=True)
class LiveSource:
    """The newest processed frame: its image (BGR, not copied: read-only) and faces."""

    frame_id: int
    timestamp: float
    head_version: Optional[int]
    frame: np.ndarray
    faces: list[FaceResult]


class DeviceView(Protocol):
    """What the web app may ask of a device."""

    def snapshot(self) -> Snapshot: ...

    def live(self) -> Optional[LiveSource]: ...

    def predict(self, frame: np.ndarray) -> tuple[list[FaceResult], dict[str, float], int]: ...

    def label(self, labels: list[str], frame_id: Optional[int], face: Optional[int], annotator: Optional[str],
              hold_s: float) -> dict: ...

    def undo(self, sample_id: str) -> dict: ...

    def samples(self) -> list[dict]: ...

    def rollback(self) -> dict: ...

    def head_history(self, limit: int = 100) -> dict: ...


class DaemonView:
    """DeviceView over a DeviceDaemon (device/daemon.py)."""

    def __init__(self, daemon):
        self.d = daemon

    def snapshot(self) -> Snapshot:
        d = self.d
        st = d.status()
        ota = d.ota
        last = ota.last_result if ota is not None else None
        return Snapshot(
            device_id=d.config.device_id, fleet=d.config.fleet, head_version=st.head_version,
            head_sha256=st.head_sha256, previous_head_version=st.previous_head_version, bundle_id=st.bundle_id,
            backend=st.backend, fps=st.fps or 0.0, latency_ms=dict(st.latency_ms),
            latency_histograms=d.stats.histograms(), frames=st.frames, dropped_frames=st.dropped_frames,
            faces=d.stats.faces, camera=st.camera or "starting", camera_reopens=d.camera_reopens,
            broker=d.config.broker.describe(), broker_connected=bool(d.link is not None and d.link.connected),
            uptime_s=st.uptime_s or 0.0, samples_sent=d.outbox.sent, samples_held=d.outbox.held,
            samples_undone=d.outbox.undone, updates_applied=ota.applied if ota else 0,
            rollbacks=ota.rollbacks if ota else 0, rejections=dict(st.rejections), last_update=st.last_update,
            last_update_at=(last.applied_at or last.received_at) if last is not None else None,
            errors=list(st.errors))

    def live(self) -> Optional[LiveSource]:
        latest = self.d.latest
        if latest is None:
            return None
        rec, frame = latest
        return LiveSource(rec.frame_id, rec.timestamp, rec.head_version, frame, list(rec.faces))

    def predict(self, frame: np.ndarray):
        return self.d.predict_image(frame)

    def label(self, labels, frame_id, face, annotator, hold_s) -> dict:
        return self.d.label(labels, frame_id, annotator, face=face, hold_s=hold_s)

    def undo(self, sample_id: str) -> dict:
        return self.d.undo(sample_id)

    def samples(self) -> list[dict]:
        return self.d.outbox.recent()

    def rollback(self) -> dict:
        if self.d.ota is None:
            return {"ok": False, "message": "the daemon has not started yet", "head_version": None}
        res = self.d.ota.rollback(source="web")
        return {"ok": res.status == "rolled_back", "message": res.message, "head_version": res.head_version}

    def head_history(self, limit: int = 100) -> dict:
        d = self.d
        store, ota = d.store, d.ota
        head = d.pipeline.head
        events = []
        for e in reversed(store.read_journal()[-limit:] if store is not None else []):
            events.append({"time": e.get("time", time.time()), "event": e.get("event", "?"),
                           "version": e.get("version", e.get("to")), "kind": e.get("kind"),
                           "base_version": e.get("base_version"), "source": e.get("source"),
                           "reason": e.get("reason"), "message": e.get("message"), "from_version": e.get("from"),
                           "sha256": e.get("sha256")})
        return {"head_version": head.version, "head_sha256": head.sha256,
                "previous_version": store.previous.version if store is not None and store.previous else None,
                "blocked_up_to": store.blocked_up_to if store is not None else -1,
                "applied": ota.applied if ota else 0, "rollbacks": ota.rollbacks if ota else 0,
                "rejections": dict(ota.rejections) if ota else {}, "events": events}

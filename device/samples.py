"""Labelled samples on their way out: held for an undo window, then published (QoS1) and tracked to the broker's ack.

A label given on the web page is held `hold_s` seconds before it is published, so that Undo within that window
really keeps it from being learned (once published, the update service may already have learned it). Labels
from the CLI/MQTT command are published at once (hold 0). The daemon's supervise loop calls `flush_due()`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from infantino.runtime.contract.messages import SampleMessage

log = logging.getLogger(__name__)


@dataclass
class OutgoingSample:
    """One labelled sample and where it is: held -> sent -> acked (or undone / refused)."""

    sample: SampleMessage
    created_at: float
    publish_at: float
    state: str = "held"  # held | sent | acked | refused | undone
    sent_at: Optional[float] = None
    head_version_at_send: Optional[int] = None
    published: object = None  # runtime.mqtt.Published once sent

    def refresh(self) -> None:
        """Move sent -> acked/refused once the broker answered the QoS1 publish."""
        p = self.published
        if self.state == "sent" and p is not None and p.event.is_set():
            self.state = "acked" if p.accepted else "refused"

    def as_dict(self) -> dict:
        self.refresh()
        s = self.sample
        return {"sample_id": s.sample_id, "state": self.state, "frame_id": s.frame_id, "label": s.label,
                "labels": s.labels, "annotator": s.annotator, "head_version": s.head_version,
                "created_at": self.created_at, "publish_at": self.publish_at, "sent_at": self.sent_at,
                "head_version_at_send": self.head_version_at_send}


class SampleOutbox:
    """Holds samples until due, publishes them with `publish(sample) -> Published`, remembers the last `keep`."""

    def __init__(self, publish: Callable[[SampleMessage], object], head_version: Callable[[], Optional[int]],
                 keep: int = 50):
        self._publish = publish
        self._head_version = head_version
        self._lock = threading.Lock()
        self._recent: collections.OrderedDict[str, OutgoingSample] = collections.OrderedDict()
        self.keep = keep
        self.sent = 0
        self.undone = 0

    def add(self, sample: SampleMessage, hold_s: float = 0.0) -> OutgoingSample:
        """Queue a sample; with hold_s == 0 it is published now."""
        now = time.time()
        out = OutgoingSample(sample, created_at=now, publish_at=now + max(0.0, hold_s))
        with self._lock:
            self._recent[sample.sample_id] = out
            self._trim()
        if hold_s <= 0:
            self._send(out)
        return out

    def undo(self, sample_id: str) -> tuple[bool, str]:
        """Drop a held sample; (False, why) when it is unknown or already sent."""
        with self._lock:
            out = self._recent.get(sample_id)
            if out is None:
                return False, f"sample {sample_id} is not among the recent samples"
            if out.state != "held":
                return False, f"sample {sample_id} was already {out.state}: too late to undo"
            out.state = "undone"
            self.undone += 1
        log.info("sample %s undone before it was sent", sample_id)
        return True, "undone"

    def flush_due(self, now: float | None = None, everything: bool = False) -> int:
        """Publish every held sample whose time has come (all of them with everything=True); returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            due = [o for o in self._recent.values() if o.state == "held" and (everything or o.publish_at <= now)]
            for o in due:
                o.state = "sending"
        for o in due:
            self._send(o)
        return len(due)

    def _send(self, out: OutgoingSample) -> None:
        out.head_version_at_send = self._head_version()
        try:
            out.published = self._publish(out.sample)
        except Exception as e:  # the link refused it (e.g. stopping): keep the daemon going, say so
            log.warning("sample %s could not be published: %s", out.sample.sample_id, e)
            out.state = "refused"
            return
        out.state, out.sent_at = "sent", time.time()
        with self._lock:
            self.sent += 1
        log.info("sample %s sent (frame %s, %s)", out.sample.sample_id, out.sample.frame_id,
                 out.sample.label or out.sample.labels)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(1 for o in self._recent.values() if o.state == "held")

    def recent(self) -> list[dict]:
        """The last samples, newest first, as dicts (state refreshed from the broker's acks)."""
        with self._lock:
            items = list(self._recent.values())
        return [o.as_dict() for o in reversed(items)]

    def _trim(self) -> None:
        while len(self._recent) > self.keep:
            oldest_id, oldest = next(iter(self._recent.items()))
            if oldest.state == "held":  # never forget a sample still waiting to go out
                break
            self._recent.pop(oldest_id)

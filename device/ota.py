"""Over-the-air head updates on the device: verify (runtime.contract.head_update), persist, swap.

Order per the contract: the message must be within the size limit and carry a valid signature over its raw
bytes (checked before anything is parsed, inflated or allocated); then it is decoded once and must be for this
device's fleet and bundle extractor, newer than the current head (and than any version rolled back from), and
for a delta start from the current head; the result's sha256 must match. Then it is persisted atomically (HeadStore) and swapped into the pipeline
between two frames. A delta whose base is ahead of the device (a missed delta) makes the device re-request the
retained full head. Every rejection is logged, journalled and returned with its reason code; a repeat of the
head already held (the retained full head after each reconnect, a QoS1 redelivery) is a silent `duplicate`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from infantino.runtime.contract.errors import UpdateRejected
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.head_update import UpdateLimits, build_head, open_update
from infantino.runtime.contract.signing import TrustedKeys

from .head_store import HeadStore

log = logging.getLogger(__name__)

# Reasons added on the device on top of runtime.head_update's codes.
DEVICE_REASONS = ("rolled_back", "wrong_input_dim", "persist_failed", "swap_failed", "no_previous", "internal_error")


@dataclass
class OtaResult:
    """What happened to one update (or a rollback): status applied|rejected|duplicate|rolled_back."""

    status: str
    source: str
    kind: Optional[str] = None
    version: Optional[int] = None
    base_version: Optional[int] = None
    reason: Optional[str] = None
    message: str = ""
    head_version: Optional[int] = None
    received_at: float = 0.0
    verify_ms: float = 0.0
    persist_ms: float = 0.0
    swap_ms: float = 0.0
    applied_at: Optional[float] = None
    created_at: Optional[float] = None  # when the trainer signed the update (its header's created_at)

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) and k.endswith("_ms") else v) for k, v in asdict(self).items()}


class OtaApplier:
    """Applies signed head updates to a HeadStore and swaps the result into the running pipeline.

    `swap(head)` installs a head in the pipeline (Pipeline.swap_head); `request_full_head()` asks for the
    retained full head (re-subscribe); `on_result(result)` is told about every outcome (status reporting).
    Thread-safe: updates are applied one at a time.
    """

    def __init__(self, store: HeadStore, keys, extractor_id: str, *, fleet: str, embedding_dim: int | None = None,
                 swap: Callable[[Head], None] | None = None, request_full_head: Callable[[], None] | None = None,
                 on_result: Callable[[OtaResult], None] | None = None, history: int = 50,
                 limits: UpdateLimits = UpdateLimits()):
        if store.current is None:
            raise ValueError("load the head store (HeadStore.load) before applying updates")
        self.store = store
        self.keys = TrustedKeys.of(keys)
        self.fleet = fleet
        self.limits = limits
        self.extractor_id = extractor_id
        self.embedding_dim = embedding_dim
        self.swap = swap
        self.request_full_head = request_full_head
        self.on_result = on_result
        self._lock = threading.Lock()
        self.rejections: collections.Counter = collections.Counter()
        self.applied = 0
        self.duplicates = 0
        self.rollbacks = 0
        self.history: collections.deque[OtaResult] = collections.deque(maxlen=history)
        self.last_result: OtaResult | None = None

    @property
    def head(self) -> Head:
        return self.store.current

    def handle(self, payload: bytes, source: str = "", received_at: float | None = None) -> OtaResult:
        """Check, persist and swap one update; never raises: every failure is a counted, journalled rejection."""
        with self._lock:
            received_at = received_at if received_at is not None else time.time()
            try:
                res = self._handle(payload, source, received_at)
            except Exception as e:  # a bug, not bad input: still a counted rejection, and the daemon lives on
                log.exception("OTA: handling an update failed unexpectedly")
                res = OtaResult(status="rejected", source=source, received_at=received_at, reason="internal_error",
                                message=f"{type(e).__name__}: {e}", head_version=self.store.current.version)
            self._finish(res)
        return res

    def _handle(self, payload: bytes, source: str, received_at: float) -> OtaResult:
        current = self.store.current
        res = OtaResult(status="rejected", source=source, received_at=received_at, head_version=current.version)
        t0 = time.perf_counter()
        try:
            upd = open_update(payload, self.keys, self.limits)  # size and signature first, then decoded once
        except UpdateRejected as e:
            res.reason, res.message = e.reason, str(e)
            res.verify_ms = (time.perf_counter() - t0) * 1e3
            return res
        res.kind, res.version, res.base_version = upd.kind, upd.version, upd.base_version
        res.created_at = upd.created_at
        if upd.fleet != self.fleet:
            res.reason, res.message = "wrong_fleet", f"update is for fleet {upd.fleet!r}, this device is in {self.fleet!r}"
            return res
        if upd.version == current.version and upd.header.get("result_sha256") == current.sha256:
            res.status, res.message = "duplicate", f"already running head v{current.version}"
            return res
        if current.version < upd.version <= self.store.blocked_up_to:
            res.reason = "rolled_back"
            res.message = (f"update v{upd.version} is not newer than v{self.store.blocked_up_to}, "
                           f"which was rolled back")
            return res
        try:
            new = build_head(current, upd, self.extractor_id, self.fleet)
        except UpdateRejected as e:
            res.reason, res.message = e.reason, str(e)
            res.verify_ms = (time.perf_counter() - t0) * 1e3
            if e.reason == "wrong_base" and upd.kind == "delta" and (upd.base_version or 0) > current.version:
                res.message += "; requesting the retained full head"
                if self.request_full_head is not None:
                    self.request_full_head()
            return res
        res.verify_ms = (time.perf_counter() - t0) * 1e3
        if self.embedding_dim is not None and new.input_dim != self.embedding_dim:
            res.reason = "wrong_input_dim"
            res.message = f"head expects {new.input_dim}-d embeddings, the extractor gives {self.embedding_dim}"
            return res
        t1 = time.perf_counter()
        try:
            self.store.commit(new)
        except OSError as e:
            res.reason, res.message = "persist_failed", f"could not write the head: {e}"
            return res
        res.persist_ms = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        if self.swap is not None:
            try:
                self.swap(new)
            except Exception as e:  # the pipeline refused the head: restore the old one on disk too
                log.exception("swapping head v%d into the pipeline failed", new.version)
                self._restore(current)
                res.reason, res.message = "swap_failed", f"pipeline refused the head: {e}"
                return res
        res.swap_ms = (time.perf_counter() - t2) * 1e3
        res.status, res.head_version, res.applied_at = "applied", new.version, time.time()
        res.message = f"head v{current.version} -> v{new.version} ({upd.kind})"
        return res

    def _restore(self, old: Head) -> None:
        try:
            self.store.restore_current(old)
        except OSError:
            log.exception("could not restore head v%d on disk", old.version)

    def rollback(self, source: str = "rollback") -> OtaResult:
        """Go back to the previous head (persisted, swapped); rejected with a reason when there is none."""
        with self._lock:
            before = self.store.current
            res = OtaResult(status="rejected", source=source, received_at=time.time(), head_version=before.version)
            try:
                t1 = time.perf_counter()
                good = self.store.rollback()
                res.persist_ms = (time.perf_counter() - t1) * 1e3
            except Exception as e:
                res.reason, res.message = "no_previous", str(e)
                self._finish(res, journal=False)
                return res
            t2 = time.perf_counter()
            if self.swap is not None:
                self.swap(good)
            res.swap_ms = (time.perf_counter() - t2) * 1e3
            res.status, res.version, res.head_version = "rolled_back", good.version, good.version
            res.applied_at = time.time()
            res.message = f"rolled back from v{before.version} to v{good.version}"
            self.rollbacks += 1
            self._finish(res, journal=False)
        return res

    def _finish(self, res: OtaResult, journal: bool = True) -> None:
        # history first, counters after: a reader that sees a counter move finds the result it counts
        if res.status != "duplicate":
            self.history.append(res)
            self.last_result = res
        if res.status == "applied":
            self.applied += 1
            try:
                self.store.journal({"event": "applied", "version": res.version, "kind": res.kind,
                                    "base_version": res.base_version, "source": res.source,
                                    "sha256": self.store.current.sha256, "previous": self.store.previous.version
                                    if self.store.previous is not None else None})
            except OSError:
                log.exception("could not journal the update")
            log.info("OTA %s from %s: %s (verify %.2f ms, persist %.2f ms, swap %.2f ms)", res.kind, res.source or "-",
                     res.message, res.verify_ms, res.persist_ms, res.swap_ms)
        elif res.status == "duplicate":
            self.duplicates += 1
            log.debug("OTA duplicate from %s: %s", res.source, res.message)
        elif res.status == "rejected":
            self.rejections[res.reason] += 1
            log.warning("OTA update rejected (%s) from %s, kind=%s version=%s base=%s: %s", res.reason,
                        res.source or "-", res.kind, res.version, res.base_version, res.message)
            if journal:
                try:
                    self.store.journal({"event": "rejected", "reason": res.reason, "kind": res.kind,
                                        "version": res.version, "base_version": res.base_version,
                                        "source": res.source, "message": res.message})
                except OSError:
                    log.exception("could not journal the rejection")
        if self.on_result is not None:
            try:
                self.on_result(res)
            except Exception:
                log.exception("on_result callback failed")

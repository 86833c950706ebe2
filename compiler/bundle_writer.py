"""Write a bundle atomically: stage it in a hidden folder beside --out, fsync, sign, then rename into place.

A failed compile removes the staging folder, so --out either holds the previous bundle (or nothing) or the
complete new one, never a half bundle. manifest.sig is the raw Ed25519 signature of the exact manifest.json
bytes; the private key never enters the bundle. The optional .tar holds the same files at its top level.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from infantino.runtime.contract.atomic import fsync_dir, umask
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.bundle import sha256_file  # the verifier's own hashing: writer and reader agree
from infantino.runtime.contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest
from infantino.runtime.contract.signing import generate_keypair, sign

log = logging.getLogger(__name__)


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical manifest.json bytes (sorted keys, 2-space indent, trailing newline) that get signed."""
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode("utf-8")


class BundleStager:
    """`with BundleStager(out, force) as st:` write into st.dir, st.sign(manifest, key), st.publish()."""

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out = Path(out).expanduser().absolute()
        self.force = force
        self.dir: Optional[Path] = None
        self.published = False
        check_out(self.out, force)

    def __enter__(self) -> "BundleStager":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.published and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            log.info("removed the staging folder of the failed compile (%s)", self.dir)
        return False

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def sign(self, manifest: Manifest, private_key) -> bytes:
        """Write manifest.json and manifest.sig (over the exact bytes written); return the bytes."""
        raw = manifest_bytes(manifest)
        (self.dir / MANIFEST_FILE).write_bytes(raw)
        (self.dir / SIGNATURE_FILE).write_bytes(sign(private_key, raw))
        return raw

    def publish(self, tar: bool = False) -> tuple[Path, Optional[Path]]:
        """fsync everything, write the optional .tar, rename the staging folder to --out (replacing with --force)."""
        check_out(self.out, self.force)
        _fsync_tree(self.dir)
        tar_path = None
        if tar:
            tar_path = self.out.with_name(self.out.name + ".tar")
            write_tar(self.dir, tar_path)
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.rmdir(old)
            os.replace(self.out, old)
        # staged 0700 (mkdtemp: nobody reads a half-built bundle); published with the mode an ordinary mkdir
        # gives, so a camera daemon running as its own user can read it
        os.chmod(self.dir, 0o777 & ~umask())
        os.replace(self.dir, self.out)
        fsync_dir(self.out.parent)
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out, tar_path


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing --out unless --force (and never a file or a non-bundle folder)."""
    if not out.exists():
        return
    if not force:
        raise InfantinoError(f"--out {out} already exists; pass --force to replace it")
    if not out.is_dir():
        raise InfantinoError(f"--out {out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        raise InfantinoError(f"--out {out} is a non-empty folder that is not a bundle; refusing to replace it")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def write_tar(src: Path, dst: Path) -> None:
    """Pack the bundle files (at the archive's top level, sorted, normalised owners/times) atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for path in sorted(p for p in src.rglob("*")):
                    rel = path.relative_to(src).as_posix()
                    info = tf.gettarinfo(str(path), arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    if path.is_file():
                        with open(path, "rb") as fh:
                            tf.addfile(info, fh)
                    else:
                        tf.addfile(info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def keygen(out_dir: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """Create out_dir/signing.key (mode 0600) and out_dir/signing.pub; refuse to overwrite without force."""
    d = Path(out_dir).expanduser()
    priv, pub = d / "signing.key", d / "signing.pub"
    if not force and (priv.exists() or pub.exists()):
        raise InfantinoError(f"{priv if priv.exists() else pub} already exists; pass --force to replace the key pair "
                             "(bundles and head updates signed with the old key will no longer verify)")
    d.mkdir(parents=True, exist_ok=True)
    generate_keypair(priv, pub)
    return priv, pub


__all__ = ["BundleStager", "check_out", "keygen", "manifest_bytes", "sha256_file", "write_tar"]

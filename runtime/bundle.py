"""Read a compiled bundle and refuse it unless files, signature, schema, hashes and head all check out.

Checks run in this order, and the first that fails raises BundleCheckError naming the check and the file:
``files`` (manifest.json and manifest.sig present) -> ``signature`` (Ed25519 over the exact bytes of
manifest.json) -> ``schema`` (pydantic Manifest, safe relative paths) -> ``files`` (every listed file present)
-> ``sha256`` (every listed file, head and reference included) -> ``head`` (head file parses and matches the
manifest). The signature is checked before the JSON is even parsed, so nothing unsigned is interpreted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .cachedir import cache_dir
from .contract.errors import BundleError, HeadError, SignatureError
from .contract.head import Head
from .contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, ArtifactInfo, Manifest
from .contract.preprocess import PreprocessSpec
from .contract.signing import load_public_key, verify

log = logging.getLogger(__name__)

PUBLIC_KEY_ENV = "INFANTINO_PUBLIC_KEY"
CHECKS = ("files", "signature", "schema", "sha256", "head")


class BundleCheckError(BundleError):
    """A bundle failed one check; `check` is one of CHECKS and `file` the offending file (if any)."""

    def __init__(self, check: str, message: str, file: str | None = None, root: str | os.PathLike | None = None):
        where = f" [{file}]" if file else ""
        super().__init__(f"bundle {root or ''} refused: {check} check failed{where}: {message}".replace("  ", " "))
        self.check = check
        self.file = file


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified bundle: its root folder, manifest and initial head. Only load_bundle() should create one."""

    root: Path
    manifest: Manifest
    head: Head
    source: Path = field(default=None)  # the directory or .tar it was loaded from

    @property
    def extractor_id(self) -> str:
        return self.manifest.extractor_id

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest.classes)

    def artifact_path(self, info: ArtifactInfo | str) -> Path:
        """Absolute path of an artifact (an ArtifactInfo or a file name from the manifest)."""
        return self.root / (info.file if isinstance(info, ArtifactInfo) else info)

    def artifacts(self, fmt: str | None = None) -> list[ArtifactInfo]:
        """The bundle's artifacts, optionally only those of one format."""
        return [a for a in self.manifest.artifacts if fmt is None or a.format == fmt]

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, embeddings): preprocessed NCHW float32 images and the PyTorch fp32 embeddings of them."""
        ref = self.manifest.reference
        if ref is None:
            raise BundleError(f"bundle {self.root} carries no reference outputs (manifest.reference is empty)")
        try:
            with np.load(self.root / ref.file, allow_pickle=False) as z:
                inputs, emb = np.asarray(z["inputs"], np.float32), np.asarray(z["embeddings"], np.float32)
        except KeyError as e:
            raise BundleError(f"{ref.file} misses array {e}; expected 'inputs' and 'embeddings'") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {ref.file}: {e}") from None
        if inputs.ndim != 4 or emb.shape != (inputs.shape[0], self.embedding_dim):
            raise BundleError(f"{ref.file}: inputs {inputs.shape} / embeddings {emb.shape} do not fit "
                              f"(need NCHW inputs and (N, {self.embedding_dim}) embeddings)")
        return inputs, emb

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Bundle({self.root}, model={m.model.name}:{m.model.version}, target={m.target}, "
                f"artifacts={[a.file for a in m.artifacts]}, head_version={self.head.version})")


def resolve_public_key(public_key: Any = None):
    """A public key object from a key object, PEM bytes, a PEM file path, or $INFANTINO_PUBLIC_KEY."""
    if public_key is None:
        env = os.environ.get(PUBLIC_KEY_ENV)
        if not env:
            raise SignatureError(f"no public key configured: pass public_key= (PEM path) or set {PUBLIC_KEY_ENV}")
        public_key = env
    if hasattr(public_key, "verify") and not isinstance(public_key, (bytes, str, os.PathLike)):
        return public_key
    if isinstance(public_key, str) and public_key.lstrip().startswith("-----BEGIN"):
        public_key = public_key.encode()
    return load_public_key(public_key)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_bundle(path: str | os.PathLike, public_key: Any = None) -> Bundle:
    """Verify and open a bundle directory or .tar; BundleCheckError names the check and file that failed."""
    src = Path(path)
    if not src.exists():
        raise BundleCheckError("files", "no such bundle directory or .tar", root=src)
    if src.is_dir():
        return _verify(src, src, public_key)
    root, fresh = _extract_tar(src)
    try:
        return _verify(root, src, public_key)
    except BundleCheckError:
        if fresh:
            raise
        # The cached extraction may have been damaged after extraction: the .tar is the truth, extract again.
        log.warning("cached extraction of %s fails verification; extracting the tar again", src)
        shutil.rmtree(cache_dir("bundles", sha256_file(src)[:24]), ignore_errors=True)
        root, _ = _extract_tar(src)
        return _verify(root, src, public_key)


def _verify(root: Path, src: Path, public_key: Any) -> Bundle:
    def fail(check: str, msg: str, file: str | None = None):
        raise BundleCheckError(check, msg, file=file, root=src)

    # 1. files: the manifest and its signature
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        if not (root / name).is_file():
            fail("files", "missing file", name)
    raw = (root / MANIFEST_FILE).read_bytes()
    sig = (root / SIGNATURE_FILE).read_bytes()

    # 2. signature over the exact manifest bytes
    try:
        key = resolve_public_key(public_key)
    except SignatureError as e:
        fail("signature", str(e), SIGNATURE_FILE)
    if len(sig) != 64:
        fail("signature", f"expected a raw 64-byte Ed25519 signature, got {len(sig)} bytes", SIGNATURE_FILE)
    try:
        verify(key, sig, raw)
    except SignatureError as e:
        fail("signature", f"{e} (manifest.json was modified or signed by another key)", MANIFEST_FILE)

    # 3. schema
    try:
        manifest = Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail("schema", f"not valid JSON: {e}", MANIFEST_FILE)
    except ValueError as e:  # pydantic.ValidationError
        fail("schema", _short_validation(e), MANIFEST_FILE)
    listed = _listed_files(manifest)
    for name, _ in listed:
        if not _safe_relpath(name):
            fail("schema", "file path must be relative and stay inside the bundle", name)
    if manifest.embedding_dim <= 0 or not manifest.artifacts:
        fail("schema", "a bundle needs embedding_dim > 0 and at least one artifact", MANIFEST_FILE)

    # 4. files listed by the manifest are present
    for name, _ in listed:
        if not (root / name).is_file():
            fail("files", "listed in the manifest but missing", name)

    # 5. sha256 of every listed file
    for name, want in listed:
        got = sha256_file(root / name)
        if got != want.lower():
            fail("sha256", f"sha256 {got[:16]}… does not match the manifest's {want[:16]}… (corrupt or tampered)",
                 name)

    # 6. head consistent with the manifest
    try:
        head = Head.from_bytes((root / manifest.head.file).read_bytes())
    except HeadError as e:
        fail("head", str(e), manifest.head.file)
    problems = []
    if head.version != manifest.head.version:
        problems.append(f"version {head.version} != manifest {manifest.head.version}")
    problems += head.fit_problems(manifest.extractor_id, manifest.embedding_dim, manifest.classes)
    if problems:
        fail("head", "; ".join(problems), manifest.head.file)
    bundle = Bundle(root=root.resolve(), manifest=manifest, head=head, source=src)
    log.info("loaded %r", bundle)
    return bundle


def _listed_files(m: Manifest) -> list[tuple[str, str]]:
    files = [(a.file, a.sha256) for a in m.artifacts] + [(m.head.file, m.head.sha256)]
    if m.reference is not None:
        files.append((m.reference.file, m.reference.sha256))
    for a in m.artifacts:  # TensorRT build settings may name extra files (e.g. a calibration cache)
        for extra in ((a.tensorrt or {}).get("files") or []):
            if isinstance(extra, dict) and "file" in extra and "sha256" in extra:
                files.append((extra["file"], extra["sha256"]))
    return files


def _safe_relpath(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def _short_validation(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        parts = [f"{'.'.join(str(x) for x in d.get('loc', ()))}: {d.get('msg')}" for d in errs()[:5]]
        return "; ".join(parts)
    return str(e)


def _extract_tar(src: Path) -> tuple[Path, bool]:
    """Extract a bundle .tar into the cache (once per tar content): (folder with manifest.json, freshly extracted).

    Extraction goes to a temporary folder renamed into place, so a crash never leaves a half bundle; members
    with absolute paths, '..', links or devices are refused. The extracted copy is verified like any folder.
    """
    digest = sha256_file(src)[:24]
    dest = cache_dir("bundles", digest)
    fresh = not dest.is_dir()
    if fresh:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=dest.parent))
        try:
            try:
                with tarfile.open(src) as tf:
                    for m in tf.getmembers():
                        if not (m.isfile() or m.isdir()) or not _safe_relpath(m.name.rstrip("/") or "."):
                            raise BundleCheckError("files", f"unsafe tar member {m.name!r}", root=src)
                    tf.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise BundleCheckError("files", f"cannot read tar: {e}", root=src) from None
            try:
                os.replace(tmp, dest)
            except OSError:  # another process extracted it first
                if not dest.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if (dest / MANIFEST_FILE).is_file():
        return dest, fresh
    subs = [p for p in dest.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file()]
    if len(subs) == 1:
        return subs[0], fresh
    raise BundleCheckError("files", "no manifest.json at the top of the tar or in its single folder",
                           MANIFEST_FILE, root=src)

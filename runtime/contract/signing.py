"""Ed25519 keys and signatures for bundles and head updates (PEM files, raw 64-byte signatures)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .atomic import atomic_write_bytes
from .errors import BackendUnavailable, SignatureError


def _crypto():
    try:
        # optional: in the device extra, not the base install:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - depends on the install profile
        raise BackendUnavailable(
            "signing needs the 'cryptography' package: pip install 'infantino[device]'"
        ) from e
    return serialization, ed25519


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> None:
    """Create a new Ed25519 key pair as PEM files; the private key file gets mode 0600."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(private_path, priv, mode=0o600)
    atomic_write_bytes(public_path, pub)


def load_private_key(path: str | os.PathLike):
    """Read an Ed25519 private key (PEM); SignatureError if missing or of another type."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise SignatureError(f"private key not found: {path}") from None
    except ValueError as e:
        raise SignatureError(f"not a PEM private key: {path} ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path_or_pem: str | os.PathLike | bytes):
    """Read an Ed25519 public key from a PEM file path or PEM bytes."""
    serialization, ed25519 = _crypto()
    if isinstance(path_or_pem, bytes):
        data, where = path_or_pem, "<bytes>"
    else:
        where = str(path_or_pem)
        try:
            data = Path(path_or_pem).read_bytes()
        except FileNotFoundError:
            raise SignatureError(f"public key not found: {where}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SignatureError(f"not a PEM public key: {where} ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where} is not an Ed25519 public key")
    return key


def sign(private_key, data: bytes) -> bytes:
    """64-byte Ed25519 signature of `data`."""
    return private_key.sign(data)


def key_id(public_key) -> str:
    """A public key's fingerprint: sha256 of its raw 32 bytes, hex (what `revoked_keys` lists)."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


class TrustedKeys:
    """The keys a device accepts updates from (rotation: several at once), minus revoked fingerprints."""

    def __init__(self, keys, revoked=()):
        keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
        self.revoked = {str(r).lower() for r in revoked}
        self.keys = [(key_id(k), k) for k in keys]
        self.keys = [(kid, k) for kid, k in self.keys if kid not in self.revoked]
        if not self.keys:
            raise SignatureError("no trusted update key left (every configured key is revoked)")

    @classmethod
    def of(cls, keys) -> "TrustedKeys":
        return keys if isinstance(keys, TrustedKeys) else cls(keys)

    def verify(self, signature: bytes, data: bytes) -> str:
        """The fingerprint of the trusted key that signed `data`; SignatureError if none did."""
        for kid, k in self.keys:
            try:
                verify(k, signature, data)
                return kid
            except SignatureError:
                continue
        raise SignatureError(f"signature does not verify with any of the {len(self.keys)} trusted key(s)")


def verify(public_key, signature: bytes, data: bytes) -> None:
    """Raise SignatureError unless `signature` is a valid signature of `data` by `public_key`."""
    from cryptography.exceptions import InvalidSignature  # optional: in the device extra, not the base install

    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError("signature does not verify with the configured public key") from None

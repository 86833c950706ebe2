"""Exception types shared by every part: each names what was wrong so CLIs can print it and exit non-zero."""


class InfantinoError(Exception):
    """Base class for errors a user can act on (bad input, bad file, missing library)."""


class BundleError(InfantinoError):
    """A bundle failed a check (schema, sha256, signature, missing file); the message says which."""


class HeadError(InfantinoError):
    """A head file or head weights are malformed (shapes, dtype, NaN, checksum)."""


class UpdateRejected(InfantinoError):
    """A head update was refused; `reason` is a short machine-readable code, the message explains."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class BackendUnavailable(InfantinoError):
    """An inference backend cannot run here; the message says what to install."""


class SignatureError(InfantinoError):
    """An Ed25519 signature or key is invalid or missing."""


class WeightsUnavailable(InfantinoError):
    """Model weights are not in the cache and cannot be fetched (or the cache is corrupt); the message says how."""

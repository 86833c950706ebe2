"""The one small interface every inference backend implements: a batch of preprocessed frames -> embeddings.

A backend module defines a typed config (BackendConfig subclass) and a Backend subclass registered by name.
The base class validates inputs and outputs, so every backend refuses the same bad inputs with the same
messages, and serialises calls for libraries whose sessions are not thread-safe.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..contract.errors import BackendUnavailable, InfantinoError
from ..contract.manifest import ArtifactInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle

log = logging.getLogger(__name__)


class BackendConfig(BaseModel):
    """Options common to every backend; each backend subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")

    threads: Optional[int] = Field(default=None, ge=1, description="CPU threads; None = library default")
    precision: Optional[Literal["fp32", "fp16", "int8"]] = Field(
        default=None, description="artifact precision to run; None = the manifest's precision if present, else fp32")


class Backend(ABC):
    """Runs one artifact of a bundle: embed(batch float32 in `input_layout`) -> (N, embedding_dim) float32."""

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type[BackendConfig]] = BackendConfig
    thread_safe: ClassVar[bool] = False  # False: the base class serialises embed() calls with a lock

    # ---- class-level: availability and artifact choice ------------------------------------------
    @classmethod
    def import_library(cls):
        """Import the backend's library; BackendUnavailable saying what to install when it is missing."""
        return None

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        """None if the backend's library can run on this host, else what is missing and what to install."""
        try:
            cls.import_library()
        except BackendUnavailable as e:
            return str(e)
        return None

    @classmethod
    def select_artifact(cls, bundle: "Bundle", precision: Optional[str] = None) -> Optional[ArtifactInfo]:
        """The bundle artifact this backend would run (precision given, else the manifest's, else fp32)."""
        candidates = [a for a in bundle.manifest.artifacts if a.format in cls.formats]
        if not candidates:
            return None
        if precision is not None:
            return next((a for a in candidates if a.precision == precision), None)
        for want in (bundle.manifest.precision, "fp32"):
            for a in candidates:
                if a.precision == want:
                    return a
        return candidates[0]

    @classmethod
    def check_usable(cls, bundle: "Bundle", precision: Optional[str] = None) -> Optional[str]:
        """None if this backend can run `bundle` here, else the reason it cannot."""
        reason = cls.unavailable_reason()
        if reason:
            return reason
        if cls.select_artifact(bundle, precision) is None:
            have = sorted({f"{a.format}/{a.precision}" for a in bundle.manifest.artifacts})
            want = "/".join(cls.formats) + (f" ({precision})" if precision else "")
            return f"{cls.name}: bundle has no {want} artifact (it has {', '.join(have)})"
        return None

    # ---- instance ------------------------------------------------------------------------------
    def __init__(self, bundle: "Bundle", config: Optional[BackendConfig] = None, artifact: Optional[ArtifactInfo] = None):
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(self.config).__name__}")
        self.bundle = bundle
        self.artifact = artifact or self.select_artifact(bundle, self.config.precision)
        if self.artifact is None:
            raise BackendUnavailable(self.check_usable(bundle, self.config.precision) or f"{self.name}: no artifact")
        if self.artifact.format not in self.formats:
            raise InfantinoError(f"{self.name} cannot run {self.artifact.format} artifacts ({self.artifact.file})")
        self.embedding_dim = bundle.manifest.embedding_dim
        h, w = bundle.manifest.preprocess.input_size
        c = bundle.manifest.preprocess.channels
        self.sample_shape = (c, h, w) if self.artifact.layout == "NCHW" else (h, w, c)
        self._lock = threading.Lock()
        self._closed = False
        self.self_test = None  # the ParityEntry of its self-test on reference.npz (create_backend runs it)
        self._load()
        log.info("%s backend ready: %s (%s, %s)", self.name, self.artifact.file, self.artifact.precision,
                 self.describe())

    @property
    def input_layout(self) -> str:
        """NCHW or NHWC: the layout embed() expects (pass it to preprocess())."""
        return self.artifact.layout

    def describe(self) -> str:
        """One line about how the backend runs (providers, threads, delegates) for logs and status."""
        return ""

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) float32 for a float32 batch (N, *sample_shape) in `input_layout`."""
        if self._closed:
            raise InfantinoError(f"{self.name} backend is closed")
        x = self._check_input(batch)
        if self.thread_safe:
            out = self._run(x)
        else:
            with self._lock:
                out = self._run(x)
        return self._check_output(out, x.shape[0])

    def close(self) -> None:
        """Release the session/interpreter; embed() fails afterwards."""
        self._closed = True
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- what a backend implements ------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Create the session/interpreter for self.artifact."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run a validated float32 batch; return (N, D) outputs (any float dtype)."""

    def _release(self) -> None:
        pass

    # ---- shared validation ------------------------------------------------------------------------
    def _check_input(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"{self.name}: batch must be a numpy array, got {type(batch).__name__}")
        if batch.dtype.kind != "f":
            raise ValueError(f"{self.name}: batch must be float32 (got {batch.dtype}); run preprocess() first")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.sample_shape:
            raise ValueError(f"{self.name}: batch must have shape (N, {', '.join(map(str, self.sample_shape))}) "
                             f"in {self.input_layout} layout, got {batch.shape}")
        if batch.shape[0] == 0:
            raise ValueError(f"{self.name}: empty batch")
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"{self.name}: batch contains NaN or Inf")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _check_output(self, out, n: int) -> np.ndarray:
        out = np.asarray(out)
        if out.ndim > 2:
            out = out.reshape(out.shape[0], -1)
        if out.shape != (n, self.embedding_dim):
            raise InfantinoError(f"{self.name}: model returned shape {out.shape}, expected ({n}, {self.embedding_dim})"
                                 f" — the artifact {self.artifact.file} does not match the manifest")
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.artifact.file if hasattr(self, 'artifact') else ''}>"

"""The classification head on device: MLP weights in float32, numpy forward pass, entropy and conformal sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import binfmt
from .classes import CLASSES
from .errors import HeadError

HEAD_MAGIC = b"INFH"
HEAD_FORMAT_VERSION = 1
ACTIVATIONS = ("relu", "tanh", "logistic", "identity")


@dataclass(frozen=True)
class HeadPrediction:
    """One prediction: top label, per-class probabilities, entropy (nats) and the conformal prediction set."""

    label: str
    index: int
    probabilities: dict[str, float]
    entropy: float
    prediction_set: list[str]
    head_version: int


@dataclass(frozen=True)
class Head:
    """An MLP head: weights = [W0, b0, W1, b1, ...] (W as (in, out)), as scikit-learn's coefs_/intercepts_.

    `conformal_qhat` is the split-conformal threshold on the score 1 - p(true class): the prediction set
    holds every class with p >= 1 - qhat (and always the top class). None means uncalibrated.
    """

    weights: tuple[np.ndarray, ...]
    version: int
    extractor_id: str
    classes: tuple[str, ...] = CLASSES
    activation: str = "relu"
    conformal_qhat: float | None = None
    coverage: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes) \
                or len(set(self.classes)) != len(self.classes):
            raise HeadError("classes must be distinct non-empty names")
        if not isinstance(self.extractor_id, str) or not isinstance(self.meta, dict):
            raise HeadError("extractor_id must be a string and meta an object")
        for name in ("conformal_qhat", "coverage"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating))
                                  or not 0.0 <= v <= 1.0):
                raise HeadError(f"{name} must be a number within [0, 1], got {v!r}")
        ws = tuple(np.array(w, dtype=np.float32, order="C", copy=True) for w in self.weights)
        object.__setattr__(self, "weights", ws)
        for w in ws:
            w.setflags(write=False)
        validate_weights(ws, len(self.classes))
        if self.activation not in ACTIVATIONS:
            raise HeadError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if type(self.version) is not int or self.version < 0:
            raise HeadError(f"version must be a non-negative integer, got {self.version!r}")
        if self.conformal_qhat is not None and not (0.0 <= self.conformal_qhat <= 1.0):
            raise HeadError(f"conformal_qhat must be within [0, 1], got {self.conformal_qhat}")

    # ---- shape facts -------------------------------------------------------------------------
    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def shapes(self) -> list[list[int]]:
        return [list(w.shape) for w in self.weights]

    @property
    def sha256(self) -> str:
        return binfmt.weights_sha256(self.weights)

    @property
    def coefs(self) -> list[np.ndarray]:
        return list(self.weights[0::2])

    @property
    def intercepts(self) -> list[np.ndarray]:
        return list(self.weights[1::2])

    # ---- inference -----------------------------------------------------------------------------
    def forward(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for embeddings (N, D) or (D,), computed in float64 like scikit-learn."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"embeddings must have shape (N, {self.input_dim}), got {np.shape(embeddings)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("embeddings contain NaN or Inf")
        n_layers = len(self.weights) // 2
        for i in range(n_layers):
            x = x @ self.weights[2 * i].astype(np.float64) + self.weights[2 * i + 1].astype(np.float64)
            if i < n_layers - 1:
                x = activate(x, self.activation)
        x = x - x.max(axis=1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=1, keepdims=True)
        return x

    def predict(self, embeddings: np.ndarray) -> list[HeadPrediction]:
        """Label, probabilities, entropy and prediction set for each embedding."""
        probs = self.forward(embeddings)
        out = []
        for p in probs:
            idx = int(np.argmax(p))
            out.append(
                HeadPrediction(
                    label=self.classes[idx],
                    index=idx,
                    probabilities={c: float(v) for c, v in zip(self.classes, p)},
                    entropy=float(entropy(p)),
                    prediction_set=[self.classes[i] for i in prediction_set_indices(p, self.conformal_qhat)],
                    head_version=self.version,
                )
            )
        return out

    # ---- serialisation -------------------------------------------------------------------------
    def header(self) -> dict:
        return {
            "format": "infantino-head",
            "format_version": HEAD_FORMAT_VERSION,
            "version": self.version,
            "extractor_id": self.extractor_id,
            "classes": list(self.classes),
            "activation": self.activation,
            "shapes": self.shapes,
            "dtype": "float32",
            "conformal_qhat": self.conformal_qhat,
            "coverage": self.coverage,
            "weights_sha256": self.sha256,
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        """Serialise to the head file format (INFH): exact float32 round trip."""
        return binfmt.pack(HEAD_MAGIC, self.header(), binfmt.arrays_to_bytes(self.weights, "float32"))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Head":
        """Parse a head file, checking shapes and the weights' sha256."""
        header, payload, _ = binfmt.unpack(HEAD_MAGIC, data)
        return cls.from_header_and_weights(header, binfmt.bytes_to_arrays(payload, header.get("shapes", []), "float32"))

    @classmethod
    def from_header_and_weights(cls, header: dict, weights: Sequence[np.ndarray]) -> "Head":
        if header.get("format_version") != HEAD_FORMAT_VERSION:
            raise HeadError(f"unsupported head format_version {header.get('format_version')!r}")
        try:
            head = cls(
                weights=tuple(weights),
                version=header["version"],
                extractor_id=header["extractor_id"],
                classes=tuple(header["classes"]),
                activation=header.get("activation", "relu"),
                conformal_qhat=header.get("conformal_qhat"),
                coverage=header.get("coverage"),
                meta=header.get("meta") or {},
            )
        except KeyError as e:
            raise HeadError(f"head header misses field {e}") from None
        except (TypeError, ValueError) as e:  # hostile header values (classes not a list, meta not a dict, ...)
            raise HeadError(f"head header has a malformed field: {e}") from None
        want = header.get("weights_sha256")
        if want is not None and want != head.sha256:
            raise HeadError("head weights do not match their sha256 (corrupt file)")
        return head

    def fit_problems(self, extractor_id: str | None = None, embedding_dim: int | None = None,
                     classes: Sequence[str] | None = None) -> list[str]:
        """Why this head cannot run on an extractor (its id, embedding size, class order); [] = it fits.

        The one check every part applies before using a head (bundle load, compile, pipeline swap, update service,
        OTA apply); None skips a field the caller does not know.
        """
        out = []
        if extractor_id is not None and self.extractor_id != extractor_id:
            out.append(f"head v{self.version} was trained on extractor {self.extractor_id[:12]}…, not "
                       f"{extractor_id[:12]}…")
        if embedding_dim is not None and self.input_dim != embedding_dim:
            out.append(f"head takes {self.input_dim}-d embeddings, the extractor gives {embedding_dim}-d")
        if classes is not None and list(self.classes) != list(classes):
            out.append(f"head classes {list(self.classes)} differ from the extractor's {list(classes)}")
        return out

    def check_fits(self, extractor_id: str | None = None, embedding_dim: int | None = None,
                   classes: Sequence[str] | None = None, what: str = "") -> "Head":
        """fit_problems, raised as one HeadError (prefixed with `what`); returns self."""
        problems = self.fit_problems(extractor_id, embedding_dim, classes)
        if problems:
            raise HeadError((f"{what}: " if what else "") + "; ".join(problems))
        return self

    def replace(self, **changes) -> "Head":
        """A copy with some fields changed (weights are re-validated)."""
        kw = dict(
            weights=self.weights, version=self.version, extractor_id=self.extractor_id, classes=self.classes,
            activation=self.activation, conformal_qhat=self.conformal_qhat, coverage=self.coverage, meta=self.meta,
        )
        kw.update(changes)
        return Head(**kw)

    @classmethod
    def from_sklearn(cls, mlp, *, version: int, extractor_id: str, conformal_qhat: float | None = None,
                     coverage: float | None = None, meta: dict | None = None) -> "Head":
        """Snapshot a fitted sklearn MLPClassifier (classes must be the 7 CLASSES in order, or their indices)."""
        classes = [CLASSES[int(c)] if not isinstance(c, str) else c for c in mlp.classes_]
        weights = []
        for W, b in zip(mlp.coefs_, mlp.intercepts_):
            weights += [W, b]
        if mlp.out_activation_ != "softmax":
            raise HeadError(f"head must use a softmax output (got {mlp.out_activation_}); train with >2 classes")
        return cls(weights=tuple(weights), version=version, extractor_id=extractor_id, classes=tuple(classes),
                   activation=mlp.activation, conformal_qhat=conformal_qhat, coverage=coverage, meta=meta or {})


def validate_weights(weights: Sequence[np.ndarray], n_classes: int) -> None:
    """Check an MLP's weight list: pairs of (in,out) matrices and (out,) biases that chain, finite values."""
    if len(weights) < 2 or len(weights) % 2:
        raise HeadError(f"expected pairs of weight matrix and bias, got {len(weights)} arrays")
    prev = None
    for i in range(0, len(weights), 2):
        W, b = weights[i], weights[i + 1]
        if W.ndim != 2 or b.ndim != 1 or W.shape[1] != b.shape[0]:
            raise HeadError(f"layer {i // 2}: weight {W.shape} and bias {b.shape} do not fit")
        if prev is not None and W.shape[0] != prev:
            raise HeadError(f"layer {i // 2}: input size {W.shape[0]} does not follow previous output {prev}")
        prev = W.shape[1]
    if prev != n_classes:
        raise HeadError(f"last layer has {prev} outputs, expected {n_classes} classes")
    for w in weights:
        if not np.all(np.isfinite(w)):
            raise HeadError("weights contain NaN or Inf")


def activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0, out=x)
    if name == "tanh":
        return np.tanh(x, out=x)
    if name == "logistic":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def entropy(p: np.ndarray) -> float:
    """Predictive entropy in nats of one probability vector."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


def prediction_set_indices(p: np.ndarray, qhat: float | None) -> list[int]:
    """Split-conformal set {k : 1 - p_k <= qhat}, never empty (the top class is always in it)."""
    top = int(np.argmax(p))
    if qhat is None:
        return [top]
    idx = [int(k) for k in np.flatnonzero(1.0 - np.asarray(p) <= qhat)]
    if top not in idx:
        idx.append(top)
    return sorted(idx, key=lambda k: -p[k])

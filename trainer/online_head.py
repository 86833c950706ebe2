"""The online head: scikit-learn MLPClassifier on 64-d embeddings, learning from single labelled samples.

Each update is ONE partial_fit step on [new sample + replay_mix samples from a latent replay buffer (+ a few
teacher anchors)] (taken without partial_fit's input checks, bit-identical: trainer.mlp_step), followed by a pull of
the weights toward an anchor head (weight-space regularisation). Replayed entries are learned against a mix of
their label and the head's own probabilities stored with them (dark experience replay; a stored output is
replaced when the head later does better on the entry's class); soft targets enter partial_fit as one weighted
row per class (labels.expand_targets). A fraction of the streamed
samples is held out in a FIFO calibration buffer; after every update the split-conformal threshold is recomputed
on it, so each head version carries the threshold of its own weights. The MLP trains in float32: its weights ARE the runtime Head's
float32 weights, so to_head() is exact and the numpy forward pass equals predict_proba on float64 input.

State files (head_state.npz) hold plain arrays and one JSON document (trainer.statefile), so loading one cannot
run code; legacy pickles (head_state.pkl) are read only when the caller trusts them, and then migrated once
(trainer.legacy_state, docs/online-head.md "State file").
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_bytes
from infantino.runtime.contract.classes import CLASSES, EMBEDDING_DIM
from infantino.runtime.contract.errors import HeadError, InfantinoError
from infantino.runtime.contract.head import ACTIVATIONS, Head, HeadPrediction, activate
from infantino.runtime.contract.layout import HEAD_FILE
from infantino.runtime.contract.layout import HEAD_STATE_FILE as STATE_FILE
from infantino.runtime.contract.layout import LEGACY_HEAD_STATE_FILE as LEGACY_STATE_FILE

from . import mlp_step
from .conformal import (CalibrationBuffer, check_coverage_level, conformal_quantile, nonconformity,
                        weighted_conformal_quantile)
from .labels import AMBIGUITY_RULES, expand_targets, label_index, make_target, target_from_any
from .legacy_state import read_legacy_pickle
from .mlp_state import mlp_from_state, mlp_to_state
from .replay import REPLAY_POLICIES, ReplayBuffer, TeacherAnchors
from .statefile import StateFileError, StateReader, looks_like_pickle, looks_like_zip, pack, rng_to_state, unpack

log = logging.getLogger(__name__)

STATE_FORMAT = "infantino-online-head"
STATE_FORMAT_VERSION = 2         # 2: statefile (.npz + state.json); 1: the legacy pickle (read only to migrate)
LEGACY_FORMAT_VERSION = 1
ROUTES = ("auto", "train", "calibration")


@dataclass
class OnlineHeadConfig:
    """Settings of the online head; docs/online-head.md gives each one's measured effect."""

    hidden: tuple[int, ...] = (100,)
    activation: str = "relu"
    seed: int = 0
    learning_rate: float = 1e-3        # Adam step size of fit()
    online_learning_rate: float | None = None  # Adam step size of learn_one/learn_many (None = learning_rate)
    alpha: float = 1e-4                # sklearn's L2 penalty
    batch_size: int = 64               # mini-batch of fit()
    # forgetting control 1: latent replay
    replay_size: int = 500             # buffer capacity (embeddings), persisted with the head
    replay_mix: int = 32               # replayed samples mixed into every update (0 = naive partial_fit)
    replay_policy: str = "class_balanced"  # or "reservoir"
    replay_weight: float = 1.0         # sample weight of each replayed entry (a new sample weighs `weight`=1)
    # forgetting control 2: pull toward the anchor head after each update, w -= anchor_strength * (w - w_anchor)
    anchor_strength: float = 0.01      # 0 = off; the anchor is the head after fit() (or set_anchor())
    # forgetting control 3: distil the head's own past outputs on replayed entries (dark experience replay)
    distill_weight: float = 0.8        # share of the stored probabilities in a replayed entry's target (0 = labels)
    distill_top: int = 3               # keep the k most probable classes of a stored distribution (rows per entry)
    # teacher anchor set (set_teacher_anchors): fixed embeddings with a teacher's probabilities, never evicted
    teacher_mix: int = 4               # anchor rows mixed into every update, rotating through the set
    # uncertainty
    coverage: float = 0.9              # split-conformal coverage level
    calib_size: int = 500              # FIFO calibration buffer capacity
    calib_holdout: float = 0.1         # share of streamed hard-labelled samples kept for calibration, not training
    recalibrate_every: int = 1         # recompute the threshold every n updates (1 = every head version)
    calib_decay: float = 0.98          # weight decay**age of calibration scores (1 = plain split conformal;
                                       # < 1 = non-exchangeable conformal that tracks drift, Barber et al. 2023)
    # label ambiguity: "soft" = annotators' vote fractions as sample weights; "majority" = majority, ties dropped
    ambiguity: str = "soft"

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive layer sizes, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.replay_policy not in REPLAY_POLICIES:
            raise ValueError(f"unknown replay_policy {self.replay_policy!r}; valid: {', '.join(REPLAY_POLICIES)}")
        if self.ambiguity not in AMBIGUITY_RULES:
            raise ValueError(f"unknown ambiguity rule {self.ambiguity!r}; valid: {', '.join(AMBIGUITY_RULES)}")
        check_coverage_level(self.coverage)
        if not 0.0 <= self.calib_holdout < 1.0:
            raise ValueError(f"calib_holdout must be in [0, 1), got {self.calib_holdout}")
        if not 0.0 < self.calib_decay <= 1.0:
            raise ValueError(f"calib_decay must be in (0, 1], got {self.calib_decay}")
        if not 0.0 <= self.anchor_strength <= 1.0:
            raise ValueError(f"anchor_strength must be in [0, 1], got {self.anchor_strength}")
        for name in ("replay_size", "replay_mix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("calib_size", "batch_size", "recalibrate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or (self.online_learning_rate is not None and self.online_learning_rate <= 0):
            raise ValueError("learning rates must be > 0")
        if self.replay_weight < 0 or self.alpha < 0:
            raise ValueError("replay_weight and alpha must be >= 0")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.distill_top < 1:
            raise ValueError(f"distill_top must be >= 1, got {self.distill_top}")
        if self.teacher_mix < 0:
            raise ValueError(f"teacher_mix must be >= 0, got {self.teacher_mix}")

    @classmethod
    def from_dict(cls, d: dict) -> "OnlineHeadConfig":
        """Build from a dict (e.g. YAML), naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown online head settings: {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        return cls(**d)


@dataclass
class _Counters:
    trained_samples: int = 0
    calibration_samples: int = 0
    dropped_samples: int = 0
    updates: int = 0


class OnlineHead:
    """MLP head that learns from one labelled embedding at a time, with replay, conformal sets and versions."""

    def __init__(self, config: OnlineHeadConfig | None = None, extractor_id: str = "",
                 classes: Sequence[str] = CLASSES, dim: int = EMBEDDING_DIM):
        self.config = config or OnlineHeadConfig()
        self.extractor_id = str(extractor_id)
        self.classes = tuple(classes)
        if len(self.classes) < 3:
            raise ValueError("the head needs at least 3 classes (softmax output)")
        self.dim = int(dim)
        self.version = 0
        self.mlp = None
        self.qhat: float | None = None
        self.rng = np.random.default_rng(self.config.seed)
        c = self.config
        self.replay = ReplayBuffer(c.replay_size, self.dim, len(self.classes), c.replay_policy, seed=c.seed + 1)
        self.calib = CalibrationBuffer(c.calib_size, self.dim)
        self.anchor: list[np.ndarray] | None = None
        self.teacher: TeacherAnchors | None = None
        self.counters = _Counters()
        self._head_cache: Head | None = None

    # ---- properties ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.mlp is not None and hasattr(self.mlp, "coefs_")

    @property
    def class_indices(self) -> np.ndarray:
        return np.arange(len(self.classes))

    # ---- training ---------------------------------------------------------------------------------
    def fit(self, X, y, epochs: int = 20, progress: bool = False) -> "OnlineHead":
        """Initial training on many embeddings: `epochs` shuffled passes of partial_fit mini-batches.

        Every mini-batch also takes `teacher_mix` teacher anchors if set. Every sample is offered to the replay
        buffer with the fitted head's probabilities (so later updates rehearse this domain and distil these
        outputs), and the resulting weights become the anchor of the weight-space pull.
        """
        X = self._check_embeddings(X)
        yi = np.array([label_index(v, self.classes) for v in _as_list(y)], dtype=np.int64)
        if len(yi) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(yi)} labels")
        if len(X) == 0:
            raise ValueError("fit needs at least one sample")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        mlp = self.mlp if self.is_fitted else self._new_mlp()
        mlp.learning_rate_init = self.config.learning_rate
        if getattr(mlp, "_optimizer", None) is not None:
            mlp._optimizer.learning_rate_init = self.config.learning_rate
        bs = self.config.batch_size
        rng = self.rng
        it = range(epochs)
        bar = None
        if progress:
            from rich.progress import Progress  # optional: rich comes with the train extra only

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task("head fit", total=epochs)
        try:
            for _ in it:
                order = rng.permutation(len(X))
                for s in range(0, len(X), bs):
                    b = order[s:s + bs]
                    if self.teacher is not None and self.config.teacher_mix > 0:
                        tx, ty, tw = self._teacher_rows()
                        _step(mlp, np.concatenate([X[b], tx]), np.concatenate([yi[b], ty]),
                              np.concatenate([np.ones(len(b), np.float32), tw]), self.class_indices)
                    else:
                        _step(mlp, X[b], yi[b], None, self.class_indices)
                if bar:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
        self.mlp = mlp
        T = np.eye(len(self.classes), dtype=np.float32)[yi]
        P = self._mlp_proba(X)
        self.replay.add_many(X, T, P=P)
        self.counters.trained_samples += len(X)
        self.set_anchor()
        self._after_update(force_recalibrate=True)
        log.info("head fitted on %d samples x %d epochs -> version %d", len(X), epochs, self.version)
        return self

    def calibrate(self, X_cal, y_cal) -> float:
        """Split-conformal threshold on held-out data (never trained on); they also seed the calibration buffer."""
        self._require_fitted()
        X = self._check_embeddings(X_cal)
        yi = np.array([label_index(v, self.classes) for v in _as_list(y_cal)], dtype=np.int64)
        if len(yi) != len(X):
            raise ValueError(f"X_cal has {len(X)} rows but y_cal has {len(yi)} labels")
        if len(X) == 0:
            raise ValueError("calibrate needs at least one sample")
        self.calib.add_many(X, yi)
        self.counters.calibration_samples += len(X)
        self._after_update(force_recalibrate=True)
        log.info("calibrated on %d samples: qhat=%.4f at coverage %.2f (version %d)",
                 len(self.calib), self.qhat, self.config.coverage, self.version)
        return float(self.qhat)

    def learn_one(self, embedding, label=None, labels=None, soft_label=None, weight: float = 1.0,
                  route: str = "auto") -> str:
        """Learn from one labelled embedding; give exactly one of label, labels (annotators) or soft_label.

        Returns what happened: "trained" (weights updated), "calibration" (held out for the conformal
        threshold), or "dropped" (annotators tied under the majority rule; nothing changes). Bad input raises
        ValueError before anything changes. Every trained/calibration update bumps `version`.
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; valid: {', '.join(ROUTES)}")
        x = self._check_embeddings(embedding)
        if len(x) != 1:
            raise ValueError(f"learn_one takes one embedding, got {len(x)}; use learn_many")
        weight = _check_weight(weight)
        target = make_target(label, labels, soft_label, self.classes, self.config.ambiguity)
        if target is None:
            self.counters.dropped_samples += 1
            log.debug("sample dropped: annotators tie under the majority rule")
            return "dropped"
        if self._goes_to_calibration(target, route):
            self.calib.add(x[0], int(np.argmax(target)))
            self.counters.calibration_samples += 1
            self._after_update(force_recalibrate=True)
            return "calibration"
        self._train_rows(x, target[None, :], np.array([weight], dtype=np.float32))
        return "trained"

    def learn_many(self, X, y, weights=None, route: str = "auto") -> dict:
        """Learn from a batch (one version bump). y entries: label, list of annotators' labels, or soft label.

        New samples go in chunks of `batch_size`, each mixed with `replay_mix` replayed samples in one
        partial_fit call. Returns counts {"trained", "calibration", "dropped"}.
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; valid: {', '.join(ROUTES)}")
        X = self._check_embeddings(X)
        ys = _as_list(y)
        if len(ys) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(ys)} labels")
        w = np.ones(len(X), dtype=np.float32) if weights is None else np.array([_check_weight(v) for v in weights],
                                                                                dtype=np.float32)
        if len(w) != len(X):
            raise ValueError(f"X has {len(X)} rows but weights has {len(w)}")
        targets = [target_from_any(v, self.classes, self.config.ambiguity) for v in ys]  # validate all first
        counts = {"trained": 0, "calibration": 0, "dropped": 0}
        keep = []
        for i, t in enumerate(targets):
            if t is None:
                counts["dropped"] += 1
            elif self._goes_to_calibration(t, route):
                self.calib.add(X[i], int(np.argmax(t)))
                counts["calibration"] += 1
            else:
                keep.append(i)
        self.counters.dropped_samples += counts["dropped"]
        self.counters.calibration_samples += counts["calibration"]
        if keep:
            T = np.stack([targets[i] for i in keep])
            self._train_rows(X[keep], T, w[keep], bump=False)
            counts["trained"] = len(keep)
        if keep or counts["calibration"]:
            self._after_update(force_recalibrate=bool(counts["calibration"]))
        return counts

    def reconfigure(self, **changes) -> "OnlineHead":
        """Change settings of a live head (replay mix/weight/policy, anchor, learning rate, conformal settings).

        Sizes fixed at creation (hidden, activation, replay_size, calib_size, seed) cannot change; the new
        config is validated before anything is applied.
        """
        fixed = {"hidden", "activation", "replay_size", "calib_size", "seed", "alpha", "batch_size"}
        bad = fixed & set(changes)
        if bad:
            raise ValueError(f"cannot change {', '.join(sorted(bad))} of an existing head (create a new one)")
        cfg = OnlineHeadConfig.from_dict({**asdict(self.config), **changes})  # validates, names unknown keys
        self.config = cfg
        self.replay.policy = cfg.replay_policy
        if self.anchor is None and cfg.anchor_strength > 0 and self.is_fitted:
            self.set_anchor()
        if {"coverage", "calib_decay"} & set(changes):
            self.recalibrate()
            self._head_cache = None
        return self

    def set_anchor(self) -> None:
        """Make the current weights the anchor that anchor_strength pulls toward (e.g. at a session start)."""
        self._require_fitted()
        self.anchor = [w.copy() for w in self.mlp.coefs_ + self.mlp.intercepts_]

    def set_teacher_anchors(self, X, P, weight: float = 1.0) -> None:
        """Keep fixed anchor embeddings X (N, D) with a teacher's class probabilities P (N, C) (e.g. the pretrained
        FER-2013 model's softmax on real faces): `teacher_mix` of them join every update as soft targets.

        They are kept apart from the replay buffer (never evicted), saved with the state, and replace any earlier
        set; `weight` is each anchor row's sample weight. Pass an empty X to remove the set.
        """
        X = self._check_embeddings(X)
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 2 or P.shape != (len(X), len(self.classes)):
            raise ValueError(f"teacher probabilities must have shape ({len(X)}, {len(self.classes)}), got {P.shape}")
        if not np.all(np.isfinite(P)) or np.any(P < 0) or np.any(P.sum(1) <= 0):
            raise ValueError("teacher probabilities must be finite, non-negative, and not all zero in a row")
        weight = _check_weight(weight)
        if len(X) == 0:
            self.teacher = None
            return
        P = P / P.sum(1, keepdims=True)
        self.teacher = TeacherAnchors(X, P.astype(np.float32), weight, seed=self.config.seed + 2)

    def recalibrate(self) -> float | None:
        """Recompute qhat for the current weights from the calibration buffer (None if it is empty).

        Scores come from a float32 forward pass; the few within 1e-4 of the threshold are then recomputed in
        float64 (the device's arithmetic), which gives the float64 threshold (to rounding) at a fraction of the cost.
        """
        if not self.is_fitted or len(self.calib) == 0:
            self.qhat = None
            return None
        Xc, yc = self.calib.data()
        c = self.config
        w = c.calib_decay ** self.calib.ages().astype(np.float64) if c.calib_decay < 1.0 else None

        def quantile(scores: np.ndarray) -> float:
            if w is None:
                return conformal_quantile(scores, c.coverage)
            return weighted_conformal_quantile(scores, w, c.coverage)

        scores = self._true_class_scores(Xc, yc)
        near = np.abs(scores - quantile(scores)) < 1e-4  # float32 errors are ~1e-7: far scores keep their order
        scores[near] = nonconformity(self._mlp_proba(Xc[near], np.float64), yc[near])
        self.qhat = quantile(scores)
        return self.qhat

    # ---- inference --------------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """(N, C) class probabilities, computed by the runtime's numpy forward pass (what devices compute)."""
        self._require_fitted()
        return self._forward(self._check_embeddings(X))

    def predict(self, X) -> list[HeadPrediction]:
        """Label, probabilities, entropy and conformal prediction set per embedding (runtime HeadPrediction)."""
        self._require_fitted()
        return self.to_head().predict(self._check_embeddings(X))

    def to_head(self) -> Head:
        """The runtime Head of the current version (float32 weights, version, extractor id, threshold)."""
        self._require_fitted()
        if self._head_cache is None or self._head_cache.version != self.version:
            weights = []
            for W, b in zip(self.mlp.coefs_, self.mlp.intercepts_):
                weights += [W, b]
            self._head_cache = Head(
                weights=tuple(weights), version=self.version, extractor_id=self.extractor_id,
                classes=self.classes, activation=self.config.activation, conformal_qhat=self.qhat,
                coverage=self.config.coverage if self.qhat is not None else None,
                meta={"trained_samples": self.counters.trained_samples,
                      "calibration_samples": len(self.calib),
                      "replay_policy": self.config.replay_policy if self.config.replay_mix else "none"},
            )
        return self._head_cache

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write the whole state (MLP + optimizer, replay and calibration buffers, teacher anchors,
        RNGs, version) as one state file: arrays + a JSON document, nothing that runs code when loaded."""
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    def save_dir(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write head_state.npz and head.infh (the runtime head file) into out_dir."""
        out_dir = Path(out_dir)
        state = self.save(out_dir / STATE_FILE)
        head = out_dir / HEAD_FILE
        atomic_write_bytes(head, self.to_head().to_bytes())
        return state, head

    def to_bytes(self, migrated_from: dict | None = None) -> bytes:
        """The state file's bytes (see save); `migrated_from` names the legacy pickle it replaces."""
        doc, arrays = self._to_state()
        if migrated_from is not None:
            doc["migrated_from"] = migrated_from
        return pack(doc, arrays)

    @classmethod
    def from_bytes(cls, data: bytes, source: str | os.PathLike = "state") -> "OnlineHead":
        """A head from a state file's bytes; a corrupt, hostile or unknown file raises StateFileError naming
        `source` and the problem."""
        return cls._read_state(data, source)[0]

    @classmethod
    def load(cls, path: str | os.PathLike, trust_legacy_pickle: bool = False) -> "OnlineHead":
        """Load a state written by save() (a file, or a folder holding head_state.npz).

        A legacy pickle state (head_state.pkl, or a folder holding only that) is refused with an explanation
        unless `trust_legacy_pickle` is True (only for files you wrote or trust: unpickling runs code); then it
        is read once and migrated: the new format is written beside it (head_state.npz; the pickle is left as
        it was) and every later load reads that file instead.
        """
        file = _state_file(Path(path))
        data = _read(file)
        if looks_like_zip(data):
            head, doc = cls._read_state(data, file)
            _check_not_stale(file, doc)
            return head
        if not looks_like_pickle(data):
            raise StateFileError(f"{file} is not an online head state (neither a {STATE_FILE} state file nor a "
                                 f"legacy pickle)")
        return cls._load_legacy(file, data, trust_legacy_pickle)

    @classmethod
    def _read_state(cls, data: bytes, source) -> tuple["OnlineHead", dict]:
        """(head, document) from a state file's bytes, errors prefixed with `source`."""
        try:
            doc, arrays = unpack(data)
            return cls._from_state(StateReader(doc, arrays)), doc
        except StateFileError as e:
            raise StateFileError(f"{source}: {e}") from None

    def _to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON document, arrays by name) of the whole head; _from_state reads them back."""
        arrays: dict[str, np.ndarray] = {}

        def part(prefix: str, doc_arrays: tuple[dict, dict]) -> dict:
            doc, a = doc_arrays
            arrays.update({f"{prefix}.{k}": v for k, v in a.items()})
            return doc

        if self.anchor is not None:
            arrays.update({f"anchor.{i}": a for i, a in enumerate(self.anchor)})
        doc = {
            "format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "written_by": _library_versions(),
            "head": {"extractor_id": self.extractor_id, "classes": list(self.classes), "dim": self.dim,
                     "version": self.version, "qhat": self.qhat, "counters": asdict(self.counters),
                     "rng": rng_to_state(self.rng), "config": asdict(self.config),
                     "anchor": self.anchor is not None},
            "mlp": part("mlp", mlp_to_state(self.mlp)) if self.is_fitted else None,
            "replay": part("replay", self.replay.to_state()),
            "calib": part("calib", self.calib.to_state()),
            "teacher": part("teacher", self.teacher.to_state()) if self.teacher is not None else None,
        }
        return doc, arrays

    @classmethod
    def _from_state(cls, r: StateReader) -> "OnlineHead":
        """The head a _to_state document describes; every field is checked before it is used."""
        _check_format(r)
        h = r.sub("head")
        config = _config_from_state(h.sub("config"))
        classes = _classes_from_state(h)
        dim, n_classes = h.int("dim", 1), len(classes)
        obj = cls.__new__(cls)  # fields set one by one below, as __init__ would
        obj.config, obj.extractor_id, obj.classes, obj.dim = config, h.str("extractor_id"), classes, dim
        obj.version = h.int("version")
        obj.qhat = h.float("qhat", 0.0, 1.0, nullable=True)
        obj.rng = h.rng("rng")
        c = h.sub("counters")
        obj.counters = _Counters(**{f.name: c.int(f.name) for f in fields(_Counters)})
        obj.mlp = (None if r.is_null("mlp") else
                   mlp_from_state(r.sub("mlp"), dim, n_classes, config.hidden, config.activation))
        obj.replay = ReplayBuffer.from_state(r.sub("replay"), dim, n_classes)
        if (obj.replay.capacity, obj.replay.policy) != (config.replay_size, config.replay_policy):
            r.fail("replay", f"capacity/policy {obj.replay.capacity}/{obj.replay.policy} differ from the config's "
                             f"{config.replay_size}/{config.replay_policy}")
        obj.calib = CalibrationBuffer.from_state(r.sub("calib"), dim, n_classes)
        if obj.calib.capacity != config.calib_size:
            r.fail("calib", f"capacity {obj.calib.capacity} differs from the config's calib_size {config.calib_size}")
        obj.teacher = None if r.is_null("teacher") else TeacherAnchors.from_state(r.sub("teacher"), dim, n_classes)
        obj.anchor = None
        if h.bool("anchor"):
            units = [dim, *config.hidden, n_classes]
            shapes = [(a, b) for a, b in zip(units, units[1:])] + [(b,) for b in units[1:]]
            obj.anchor = [r.array(f"anchor.{i}", s, np.float32) for i, s in enumerate(shapes)]
        r.finish()
        obj._head_cache = None
        return obj

    @classmethod
    def _load_legacy(cls, file: Path, data: bytes, trust: bool) -> "OnlineHead":
        """A legacy pickle: its migrated copy if one exists, else (trusted only) read once and migrate."""
        if file.suffix == ".npz":
            raise StateFileError(f"{file} is a pickle under the new format's name; pickles are never loaded from "
                                 f".npz files (a state file is a zip of arrays)")
        target = _migrated_path(file)
        sha = hashlib.sha256(data).hexdigest()
        if target.is_file():
            head, doc = cls._read_state(_read(target), target)
            if (doc.get("migrated_from") or {}).get("sha256") != sha:
                raise StateFileError(f"{file} is a legacy pickle state and {target.name} beside it was not migrated "
                                     f"from it: load {target} directly, or move one of them away")
            log.info("%s was migrated to %s earlier; loading that", file, target.name)
            return head
        if not trust:
            raise StateFileError(_legacy_refusal(file, target))
        head = cls._from_legacy(read_legacy_pickle(data, file), file)
        try:
            new = head.to_bytes(migrated_from={"file": file.name, "sha256": sha})
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:  # fields the pickle lacked
            raise StateFileError(f"{file}: legacy state cannot be converted: {type(e).__name__}: {e}") from None
        head = cls.from_bytes(new, target)  # what every later load returns, checked like any state file
        try:
            atomic_write_bytes(target, new)
        except OSError as e:
            log.warning("legacy pickle state %s loaded, but %s could not be written (%s): the next load needs "
                        "--migrate-legacy-state again", file, target, e)
            return head
        log.warning("migrated legacy pickle state %s to %s (loads without running code); %s is left as it was "
                    "and is not read again: delete it when no older infantino needs it", file, target.name, file.name)
        return head

    @classmethod
    def _from_legacy(cls, blob, file: Path) -> "OnlineHead":
        """The head a legacy pickle held ({"format", "format_version": 1, "state": head.__dict__})."""
        if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
            raise StateFileError(f"{file} is not an infantino online head state")
        if blob.get("format_version") != LEGACY_FORMAT_VERSION:
            raise StateFileError(f"{file}: unsupported legacy format_version {blob.get('format_version')!r}")
        try:
            state = dict(blob["state"])
            obj = cls.__new__(cls)
            cfg = state.pop("config")
            obj.__dict__.update(state)
            obj.config = OnlineHeadConfig(**cfg)
            obj.__dict__.setdefault("teacher", None)  # state files written before teacher anchors existed
            obj._head_cache = None
            return obj
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateFileError(f"{file}: malformed legacy state: {type(e).__name__}: {e}") from None

    # ---- internals --------------------------------------------------------------------------------
    def _new_mlp(self):
        from sklearn.neural_network import MLPClassifier  # heavy: scikit-learn, ~1 s to import (train extra)

        c = self.config
        return MLPClassifier(hidden_layer_sizes=c.hidden, activation=c.activation, solver="adam", alpha=c.alpha,
                             learning_rate_init=c.learning_rate, batch_size="auto", random_state=c.seed,
                             shuffle=False)

    def _train_rows(self, X: np.ndarray, T: np.ndarray, w: np.ndarray, bump: bool = True) -> None:
        """One partial_fit per chunk on new rows + replayed rows (+ teacher anchors), anchor pull, then buffer."""
        mlp = self.mlp if self.is_fitted else self._new_mlp()
        c = self.config
        lr = c.online_learning_rate or c.learning_rate
        if getattr(mlp, "_optimizer", None) is not None:
            mlp._optimizer.learning_rate_init = lr  # Adam keeps its moments; only the step size changes
        mlp.learning_rate_init = lr
        chunk = max(1, c.batch_size) if len(X) > 1 else 1
        for s in range(0, len(X), chunk):
            Xn, Tn, wn = X[s:s + chunk], T[s:s + chunk], w[s:s + chunk]
            parts = [expand_targets(Xn, Tn, wn)]
            r = None
            if c.replay_mix > 0 and len(self.replay):
                r = self.replay.sample(c.replay_mix)
                Tr = r.T
                if c.distill_weight > 0:
                    Tr = (1.0 - c.distill_weight) * r.T + c.distill_weight * _top_k(r.P, c.distill_top)
                parts.append(expand_targets(r.X, Tr, r.w * np.float32(c.replay_weight)))
            if self.teacher is not None and c.teacher_mix > 0:
                parts.append(self._teacher_rows())
            rx, ry, rw = (np.concatenate(v) for v in zip(*parts)) if len(parts) > 1 else parts[0]
            _step(mlp, rx, ry, rw, self.class_indices)
            self.mlp = mlp
            self._pull_to_anchor()
            if r is not None and c.distill_weight > 0:
                self.replay.improve(r.idx, self._mlp_proba(r.X))
            P = self._mlp_proba(Xn) if c.distill_weight > 0 else None
            for i in range(len(Xn)):
                self.replay.add(Xn[i], Tn[i], float(wn[i]), None if P is None else P[i])
        self.counters.trained_samples += len(X)
        if bump:
            self._after_update()

    def _teacher_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next teacher_mix anchors of the rotation as soft-target rows (top distill_top classes, set's weight)."""
        t = self.teacher
        idx = t.take(self.config.teacher_mix)
        P = _top_k(t.P[idx], self.config.distill_top)
        return expand_targets(t.X[idx], P, np.full(len(idx), t.weight, np.float32))

    def _pull_to_anchor(self) -> None:
        a = self.config.anchor_strength
        if a <= 0 or self.anchor is None:
            return
        for p, q in zip(self.mlp.coefs_ + self.mlp.intercepts_, self.anchor):
            p -= np.float32(a) * (p - q)

    def _mlp_proba(self, X: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Class probabilities of the MLP's current weights without building a Head. In float64 these are the
        runtime's Head.forward operations; float32 is cheaper. Rows go in blocks of 128: from ~200 rows OpenBLAS
        starts threads, which cost up to 8 ms a call when the cores are busy (measured)."""
        X = np.asarray(X, dtype=dtype)
        if len(X) > _BLOCK:
            return np.concatenate([self._mlp_proba(X[s:s + _BLOCK], dtype) for s in range(0, len(X), _BLOCK)])
        z = X
        last = len(self.mlp.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.mlp.coefs_, self.mlp.intercepts_)):
            z = z @ W.astype(dtype, copy=False) + b.astype(dtype, copy=False)
            if i < last:
                z = activate(z, self.config.activation)
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def _true_class_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """1 - p(true class) per row from a float32 forward pass (recalibration's first pass). Matrix products go
        in blocks of _BLOCK rows as in _mlp_proba; bias, activation and softmax run once on all rows, in place."""
        W, b = self.mlp.coefs_, self.mlp.intercepts_
        z = np.asarray(X, dtype=np.float32)
        for i in range(len(W)):
            out = np.empty((len(z), W[i].shape[1]), dtype=np.float32)
            for s in range(0, len(z), _BLOCK):
                np.matmul(z[s:s + _BLOCK], W[i], out=out[s:s + _BLOCK])
            out += b[i]
            z = activate(out, self.config.activation) if i < len(W) - 1 else out
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        p = z[np.arange(len(y)), y] / z.sum(axis=1)
        return 1.0 - p.astype(np.float64)

    def _after_update(self, force_recalibrate: bool = False) -> None:
        self.version += 1
        self.counters.updates += 1
        if force_recalibrate or self.counters.updates % self.config.recalibrate_every == 0:
            self.recalibrate()
        self._head_cache = None

    def _goes_to_calibration(self, target: np.ndarray, route: str) -> bool:
        if route == "calibration":
            if not np.isclose(target.max(), 1.0):
                raise ValueError("only a definite label (not a soft or split vote) can go to the calibration set")
            return True
        if route == "train" or not self.is_fitted or self.config.calib_holdout <= 0:
            return False
        if not np.isclose(target.max(), 1.0):
            return False
        return bool(self.rng.random() < self.config.calib_holdout)

    def _forward(self, X: np.ndarray) -> np.ndarray:
        return self.to_head().forward(X)

    def _check_embeddings(self, X) -> np.ndarray:
        try:
            a = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"embeddings must be numeric arrays, got {type(X).__name__}") from None
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"embeddings must have {self.dim} values each (shape (N, {self.dim}) or ({self.dim},)), "
                             f"got shape {np.shape(X)}")
        if not np.all(np.isfinite(a)):
            raise ValueError("embeddings contain NaN or Inf")
        a32 = a.astype(np.float32)
        if not np.all(np.isfinite(a32)):
            raise ValueError("embeddings overflow float32")
        return a32

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise HeadError("the online head has not been trained yet (call fit or learn_one first)")

    def __repr__(self) -> str:
        return (f"OnlineHead(version={self.version}, extractor_id={self.extractor_id[:12]!r}, "
                f"trained={self.counters.trained_samples}, replay={len(self.replay)}, calib={len(self.calib)}, "
                f"qhat={self.qhat})")


_BLOCK = 128  # rows per matrix product in _mlp_proba (below OpenBLAS's threading threshold)


def _legacy_refusal(file: Path, target: Path) -> str:
    """Why a legacy pickle state is not loaded, and how to migrate it."""
    return (f"{file} is a legacy online head state: a Python pickle, and loading a pickle runs whatever code it "
            f"contains, so a state fetched from a shared MLflow server or someone else's folder could take over "
            f"this machine. It is not loaded unless you say you trust it. If you wrote it yourself or trust its "
            f"source, migrate it once with --migrate-legacy-state (Python: OnlineHead.load(path, "
            f"trust_legacy_pickle=True); update service: `migrate_legacy_state: true` on the fleet): that writes "
            f"{target.name} beside it, which holds only arrays and JSON and is what every later load reads.")


def _state_file(path: Path) -> Path:
    """The state file to read: `path` itself, or in a folder head_state.npz (else the legacy head_state.pkl)."""
    if path.is_dir():
        for name in (STATE_FILE, LEGACY_STATE_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"online head state not found: no {STATE_FILE} (or legacy {LEGACY_STATE_FILE}) "
                                f"in {path}")
    if not path.is_file():
        if _migrated_path(path).is_file() and path.suffix == ".pkl":
            log.info("%s is gone; loading %s (migrated from it)", path, _migrated_path(path).name)
            return _migrated_path(path)
        raise FileNotFoundError(f"online head state not found: {path}")
    return path


def _migrated_path(file: Path) -> Path:
    """Where a legacy pickle's migrated state goes: head_state.pkl -> head_state.npz, x.pkl -> x.npz."""
    if file.name == LEGACY_STATE_FILE:
        return file.with_name(STATE_FILE)
    if file.suffix == ".pkl":
        return file.with_suffix(".npz")
    return file.with_name(file.name + ".npz")


def _check_not_stale(file: Path, doc: dict) -> None:
    """A migrated state whose legacy pickle beside it has changed since is ambiguous: refuse it."""
    src = doc.get("migrated_from")
    if not isinstance(src, dict) or not isinstance(src.get("file"), str):
        return
    legacy = file.with_name(Path(src["file"]).name)
    if legacy.is_file() and hashlib.sha256(legacy.read_bytes()).hexdigest() != src.get("sha256"):
        raise StateFileError(f"{legacy} changed after it was migrated to {file.name}: move away the one you do not "
                             f"want (to migrate the new pickle, delete {file.name} and load it with "
                             f"--migrate-legacy-state)")


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as e:
        raise InfantinoError(f"cannot read online head state {file}: {e}") from None


def _check_format(r: StateReader) -> None:
    """format must be ours and format_version one this code reads (clear errors for newer files)."""
    if r.doc.get("format") != STATE_FORMAT:
        raise StateFileError(f"not an infantino online head state (format {r.doc.get('format')!r}, "
                             f"expected {STATE_FORMAT!r})")
    v = r.doc.get("format_version")
    if v != STATE_FORMAT_VERSION:
        newer = isinstance(v, int) and not isinstance(v, bool) and v > STATE_FORMAT_VERSION
        raise StateFileError(f"unsupported format_version {v!r} (this infantino reads {STATE_FORMAT_VERSION})"
                             + ("; it was written by a newer infantino: upgrade to load it" if newer else ""))


def _config_from_state(r: StateReader) -> OnlineHeadConfig:
    """OnlineHeadConfig from its stored fields: each of the type its default has, then the config's own checks.
    Settings a file lacks (written before they existed) take their defaults."""
    values = {}
    for f in fields(OnlineHeadConfig):
        if f.name not in r.doc:
            continue
        default = f.default if f.default is not MISSING else None
        if isinstance(default, tuple):
            v = r.raw(f.name)
            if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                r.fail(f.name, "must be a list of integers")
            values[f.name] = tuple(v)
        elif isinstance(default, str):
            values[f.name] = r.str(f.name)
        elif isinstance(default, int) and not isinstance(default, bool):
            values[f.name] = r.int(f.name)  # seeds, sizes and counts: all >= 0
        else:  # floats, and online_learning_rate (None = learning_rate)
            values[f.name] = r.float(f.name, nullable=default is None)
    unknown = sorted(set(r.doc) - {f.name for f in fields(OnlineHeadConfig)})
    if unknown:
        r.fail(unknown[0], "unknown setting (written by a newer infantino?)")
    try:
        return OnlineHeadConfig(**values)
    except (ValueError, TypeError) as e:
        raise StateFileError(f"{r.prefix.rstrip('.')}: {e}") from None


def _classes_from_state(h: StateReader) -> tuple[str, ...]:
    v = h.raw("classes")
    if (not isinstance(v, list) or len(v) < 3 or not all(isinstance(c, str) and 0 < len(c) <= 100 for c in v)
            or len(set(v)) != len(v)):
        h.fail("classes", "must be a list of at least 3 distinct class names")
    return tuple(v)


def _library_versions() -> dict:
    """Who wrote the file (informational; loading does not depend on it)."""
    sk = sys.modules.get("sklearn")  # imported by any fitted head; an unfitted one should not pay for it
    return {"numpy": np.__version__, "scikit-learn": getattr(sk, "__version__", None)}


def _step(mlp, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, classes: np.ndarray) -> None:
    """One Adam step on all rows: partial_fit's step without its input checks when mlp_step allows it (same
    result, bit for bit), else partial_fit (whose "auto" batch would split more than 200 rows: one batch here)."""
    big = len(X) > 200
    if big:
        mlp.batch_size = len(X)
    try:
        if not mlp_step.step(mlp, X, y, w):
            mlp.partial_fit(X, y, sample_weight=w, classes=classes)
    finally:
        if big:
            mlp.batch_size = "auto"


def _top_k(P: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest probabilities, renormalised (fewer partial_fit rows per soft target)."""
    if k >= P.shape[1]:
        return P
    out = np.zeros_like(P)
    idx = np.argpartition(-P, k - 1, axis=1)[:, :k]
    rows = np.arange(len(P))[:, None]
    out[rows, idx] = P[rows, idx]
    return out / out.sum(1, keepdims=True)


def _as_list(y) -> list:
    if isinstance(y, np.ndarray):
        return list(y) if y.ndim == 1 else [row for row in y]
    return list(y)


def _check_weight(w) -> float:
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ValueError(f"sample weight must be a number, got {w!r}") from None
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"sample weight must be finite and > 0, got {w}")
    return w

"""An online-learning session: a stream of labelled samples -> OnlineHead.learn_one, tracked as one MLflow run.

The run logs a step-indexed curve (prequential accuracy: each sample is predicted before it is learned;
held-out accuracy every `eval_every` steps when eval data is given; the conformal threshold; learn_one time),
and registers the resulting head as `<prefix>-head` at the end of the session and, if asked, every
`register_every` updates (never one model per sample: a registry write costs seconds).

Stream sources: an image folder (one sub-folder per class; needs the extractor), a .npz with `embeddings` and
`labels`, or JSON lines (a .jsonl file, or `-` for stdin) with `embedding` or `image` plus `label`, `labels`
(annotators) or `soft_label`, and optional `weight`/`confidence` (SampleMessage fields are accepted).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_text
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.layout import EXTRACTOR_FILE
from infantino.runtime.contract.preprocess import preprocess

from . import tracking
from .data import load_dataset
from .labels import label_index, make_target
from .online_head import HEAD_FILE, STATE_FILE, OnlineHead
from .predictor import read_bgr, registry_extractor_version, resolve_model_pair
from .tracking import FitTracker

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"


@dataclass
class Sample:
    """One labelled sample of a stream: an embedding or an image, and its label(s)."""

    embedding: np.ndarray | None = None
    image: np.ndarray | None = None
    label: Any = None
    labels: list | None = None
    soft_label: Any = None
    weight: float = 1.0
    sample_id: str | None = None


@dataclass
class SessionConfig:
    """Settings of `infantino-train partial` / CustomTrainer.run_partial."""

    head: str | None = None             # head folder or models:/ URI (default models:/<prefix>-head@champion)
    extractor: str | None = None        # extractor.pt / folder / URI; needed for image samples
    out: str = "runs/partial"
    eval_data: str | None = None        # held-out image folder or .npz for the accuracy curve
    eval_every: int = 50                # log the curve every n samples
    register_every: int = 0             # also register the head every n updates (0 = only at the end)
    limit: int | None = None            # stop after n samples
    seed: int = 0                       # order of image-folder streams
    head_settings: dict = field(default_factory=dict)  # OnlineHead.reconfigure(**head_settings)
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "infantino"
    registry_prefix: str = "infantino"
    register: bool = True
    progress: bool = True
    strict: bool = False                # a bad sample ends the session (default: skipped with a warning)
    migrate_legacy_state: bool = False  # trust a legacy head_state.pkl: read it once, write head_state.npz beside it

    def validate(self) -> None:
        if self.eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.register_every < 0:
            raise ValueError(f"--register-every must be >= 0, got {self.register_every}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.eval_data and not Path(self.eval_data).exists():
            raise FileNotFoundError(f"--eval-data not found: {self.eval_data}")


@dataclass
class SessionResult:
    """What a session did: counts, versions, curve summary, files, MLflow run and registered versions."""

    out_dir: Path
    samples: int = 0
    routes: dict = field(default_factory=lambda: {"trained": 0, "calibration": 0, "dropped": 0, "rejected": 0})
    start_version: int = 0
    end_version: int = 0
    prequential_accuracy: float | None = None
    prequential_coverage: float | None = None
    eval_before: float | None = None
    eval_after: float | None = None
    learn_ms_p50: float | None = None
    learn_ms_p95: float | None = None
    qhat: float | None = None
    extractor: str | None = None        # where the extractor came from (predict finds it through session.json)
    run_id: str | None = None
    registered_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


# ---- stream sources ---------------------------------------------------------------------------------------
def iter_source(source: str | os.PathLike, embed=None, seed: int = 0, progress: bool = False) -> Iterator[Sample]:
    """Samples from a folder of class sub-folders, a .npz, a .jsonl file or "-" (stdin JSON lines)."""
    s = str(source)
    if s == "-":
        yield from _iter_jsonl(sys.stdin, "<stdin>")
        return
    p = Path(s)
    if not p.exists():
        raise FileNotFoundError(f"stream not found: {s} (give an image folder, a .npz, a .jsonl file or -)")
    if p.is_dir():
        yield from _iter_folder(p, embed, seed, progress)
    elif p.suffix == ".npz":
        X, y = read_npz(p)
        for i in range(len(X)):
            yield Sample(embedding=X[i], label=_label_value(y[i]), sample_id=str(i))
    elif p.suffix in (".jsonl", ".json", ".ndjson"):
        with open(p, encoding="utf-8") as f:
            yield from _iter_jsonl(f, str(p))
    else:
        raise ValueError(f"cannot read a stream from {p}: expected a folder, .npz or .jsonl")


def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) from a .npz holding `embeddings`/`X` and `labels`/`y`."""
    z = np.load(path, allow_pickle=False)
    X = next((z[k] for k in ("embeddings", "X") if k in z), None)
    y = next((z[k] for k in ("labels", "y") if k in z), None)
    if X is None or y is None:
        raise ValueError(f"{path} must hold arrays 'embeddings' and 'labels' (found: {', '.join(z.files)})")
    if len(X) != len(y):
        raise ValueError(f"{path}: {len(X)} embeddings but {len(y)} labels")
    return X, y


def _label_value(v):
    return v.item() if isinstance(v, np.generic) else v


def _iter_folder(root: Path, embed, seed: int, progress: bool) -> Iterator[Sample]:
    images = load_dataset(root)
    if embed is None:
        raise InfantinoError("an image stream needs the extractor (give --extractor or a head with one)")
    order = np.random.default_rng(seed).permutation(len(images))
    for s in range(0, len(order), 64):
        idx = order[s:s + 64]
        embs = embed([images.image(int(i)) for i in idx])
        for i, e in zip(idx, embs):
            yield Sample(embedding=e, label=int(images.labels[int(i)]), sample_id=str(i))


def _iter_jsonl(f, name: str) -> Iterator[Sample]:
    for n, line in enumerate(f, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}:{n}: not JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{name}:{n}: each line must be a JSON object")
        weight = d.get("weight", d.get("confidence")) or 1.0
        sample = Sample(label=d.get("label"), labels=d.get("labels"), soft_label=d.get("soft_label"),
                        weight=float(weight), sample_id=str(d.get("sample_id", n)))
        if "embedding" in d:
            sample.embedding = np.asarray(d["embedding"], dtype=np.float64)
        elif "image" in d:
            sample.image = read_bgr(d["image"])
        else:
            raise ValueError(f"{name}:{n}: a sample needs 'embedding' or 'image'")
        yield sample


def as_sample(item) -> Sample:
    """A Sample from a Sample, a dict (as a JSON line), or a tuple (embedding_or_image, label)."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, dict):
        s = Sample(label=item.get("label"), labels=item.get("labels"), soft_label=item.get("soft_label"),
                   weight=float(item.get("weight", item.get("confidence")) or 1.0), sample_id=item.get("sample_id"))
        x = item.get("embedding", item.get("image"))
        if x is None:
            raise ValueError("a sample needs 'embedding' or 'image'")
        _set_input(s, x)
        return s
    if isinstance(item, (tuple, list)) and len(item) == 2:
        s = Sample(label=item[1])
        _set_input(s, item[0])
        return s
    raise ValueError(f"cannot read a labelled sample from {type(item).__name__}")


def _set_input(s: Sample, x) -> None:
    if isinstance(x, (str, os.PathLike)):
        s.image = read_bgr(x)
        return
    a = np.asarray(x)
    if a.dtype == np.uint8 and a.ndim in (2, 3):
        s.image = a
    else:
        s.embedding = a


# ---- the session ------------------------------------------------------------------------------------------
class OnlineSession:
    """Runs OnlineHead.learn_one over a stream, with a step-indexed curve in MLflow and batched registration."""

    def __init__(self, config: SessionConfig, head: OnlineHead | None = None):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self._extractor = None
        self._head_dir = None
        self.source_extractor_version = None
        if head is None:
            head = self._load_head()
        self.head = head
        if config.head_settings:
            head.reconfigure(**config.head_settings)
        self.tracker = None

    # -- models --
    def _load_head(self) -> OnlineHead:
        prefix = self.config.registry_prefix
        src = self.config.head or f"models:/{prefix}-head@champion"
        if self.config.tracking_uri or tracking.is_mlflow_uri(src):
            tracking.configure_tracking(self.config.tracking_uri)
        self._head_dir = tracking.resolve_head(src)
        if tracking.is_mlflow_uri(src):
            self.source_extractor_version = registry_extractor_version(src, prefix)
        log.info("online head from %s", self._head_dir)
        return OnlineHead.load(self._head_dir, trust_legacy_pickle=self.config.migrate_legacy_state)

    def extractor(self):
        """(model, config), loaded on first use and checked against the head's extractor_id."""
        if self._extractor is None:
            from .extractor import extractor_id, load_extractor  # heavy: trainer.extractor imports torch

            if self.config.extractor:
                path = tracking.resolve_extractor(self.config.extractor)
            elif self._head_dir is not None:
                path, _ = resolve_model_pair(self.config.head, None, self.config.registry_prefix)
            else:
                raise InfantinoError("image samples need an extractor: give --extractor")
            model, cfg = load_extractor(path)
            eid = extractor_id(model)
            if self.head.extractor_id and eid != self.head.extractor_id:
                raise InfantinoError(f"extractor {path} ({eid[:12]}…) is not the one the head was trained on "
                                     f"({self.head.extractor_id[:12]}…)")
            self._extractor = (model, cfg)
        return self._extractor

    def _extractor_source(self) -> str | None:
        """The extractor given, or the one beside a local head folder (None: resolved from the registry later)."""
        if self.config.extractor:
            p = Path(self.config.extractor)
            return str(p.resolve()) if p.exists() else self.config.extractor
        if self._head_dir is not None and (self._head_dir / EXTRACTOR_FILE).is_file():
            return str((self._head_dir / EXTRACTOR_FILE).resolve())
        return None

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        import torch  # heavy: torch, ~1.3 s to import (train extra)

        from .extractor import embed_batch  # heavy: trainer.extractor imports torch

        model, cfg = self.extractor()
        return embed_batch(model, torch.from_numpy(preprocess(images, cfg.spec, "NCHW"))).numpy().astype(np.float32)

    def _eval_set(self) -> tuple[np.ndarray, np.ndarray] | None:
        src = self.config.eval_data
        if not src:
            return None
        p = Path(src)
        if p.suffix == ".npz":
            X, y = read_npz(p)
            return X.astype(np.float32), np.array([_as_index(v) for v in y])
        images = load_dataset(p)
        X = np.concatenate([self.embed([images.image(i) for i in range(s, min(s + 64, len(images)))])
                            for s in range(0, len(images), 64)])
        return X, np.asarray(images.labels, dtype=np.int64)

    # -- running --
    def run(self, stream: Iterable | str | os.PathLike | None = None) -> SessionResult:
        """Learn from every sample of `stream` (a source path, or an iterable of samples); save and register."""
        cfg = self.config
        head = self.head
        if stream is None or isinstance(stream, (str, os.PathLike)):
            if stream is None:
                raise ValueError("no stream given")
            samples = iter_source(stream, self.embed, cfg.seed, cfg.progress)
        else:
            samples = (as_sample(s) for s in stream)
        res = SessionResult(out_dir=self.out, start_version=head.version, extractor=self._extractor_source())
        ev = self._eval_set()
        acc = (lambda: float((head.predict_proba(ev[0]).argmax(1) == ev[1]).mean())) if ev is not None else None
        if ev is not None and head.is_fitted:
            res.eval_before = acc()
        self._start_tracking(res)
        try:
            self._run(samples, res, acc)
        except BaseException:
            if self.tracker:
                self.tracker.finish("FAILED")
            raise
        log.info("session: %d samples %s, head v%d -> v%d, prequential acc %s", res.samples, res.routes,
                 res.start_version, res.end_version,
                 f"{res.prequential_accuracy:.3f}" if res.prequential_accuracy is not None else "n/a")
        return res

    def _run(self, samples, res: SessionResult, acc) -> None:
        cfg = self.config
        head = self.head
        times, hits, covered = [], [], []
        last_registered = head.version
        bar = self._progress()
        try:
            for n, sample in enumerate(samples, start=1):
                if cfg.limit and n > cfg.limit:
                    break
                x = sample.embedding
                if x is None:
                    x = self.embed([sample.image])[0]
                truth = _truth(sample)
                if head.is_fitted and truth is not None and _valid_embedding(x, head.dim):
                    pred = head.predict(x)[0]
                    hits.append(pred.index == truth)
                    covered.append(head.classes[truth] in pred.prediction_set)
                t = time.perf_counter()
                try:
                    outcome = head.learn_one(x, label=sample.label, labels=sample.labels,
                                             soft_label=sample.soft_label, weight=sample.weight)
                except ValueError as e:  # the head is unchanged; one bad sample does not end the session
                    if cfg.strict:
                        raise ValueError(f"sample {sample.sample_id or n}: {e}") from None
                    log.warning("sample %s rejected: %s", sample.sample_id or n, e)
                    res.routes["rejected"] += 1
                    res.samples = n
                    continue
                times.append((time.perf_counter() - t) * 1e3)
                res.routes[outcome] += 1
                res.samples = n
                if bar:
                    bar[0].advance(bar[1])
                if n % cfg.eval_every == 0:
                    self._log_curve(n, hits, covered, times, acc)
                if (cfg.register_every and head.version - last_registered >= cfg.register_every):
                    self._save_and_register(res, final=False)
                    last_registered = head.version
        finally:
            if bar:
                bar[0].stop()
        if res.samples == 0:
            raise ValueError("the stream held no samples")
        if res.routes["rejected"] == res.samples:
            raise ValueError(f"all {res.samples} samples were rejected (see the warnings); nothing learned")
        if res.samples % cfg.eval_every:
            self._log_curve(res.samples, hits, covered, times, acc)
        res.end_version = head.version
        res.qhat = head.qhat
        res.prequential_accuracy = float(np.mean(hits)) if hits else None
        res.prequential_coverage = float(np.mean(covered)) if covered else None
        res.eval_after = acc() if acc else None
        if times:
            res.learn_ms_p50, res.learn_ms_p95 = (float(v) for v in np.percentile(times, [50, 95]))
        self._save_and_register(res, final=True)

    def _progress(self):
        if not self.config.progress or not sys.stderr.isatty():
            return None
        from rich.progress import Progress  # optional: rich comes with the train extra only

        p = Progress(transient=True)
        p.start()
        return p, p.add_task("learning", total=self.config.limit)

    def _start_tracking(self, res: SessionResult) -> None:
        cfg = self.config
        if not cfg.tracking:
            return
        self.tracker = FitTracker(cfg.tracking_uri, cfg.experiment, run_name="partial",
                                  tags={"infantino.kind": "online-session", "extractor_id": self.head.extractor_id})
        res.run_id = self.tracker.run_id
        params = {f"head.{k}": v for k, v in asdict(self.head.config).items()}
        params.update(start_version=self.head.version, head_source=cfg.head or self._head_dir or "in-memory",
                      eval_every=cfg.eval_every, register_every=cfg.register_every)
        self.tracker.log_params(params)

    def _log_curve(self, step: int, hits, covered, times, acc) -> None:
        h = self.head
        m = {"version": h.version, "learn_ms": float(np.median(times[-self.config.eval_every:])) if times else None,
             "qhat": h.qhat}
        if hits:
            w = self.config.eval_every
            m["prequential_acc"] = float(np.mean(hits))
            m["prequential_acc_window"] = float(np.mean(hits[-w:]))
            m["prequential_coverage"] = float(np.mean(covered))
        if acc:
            m["eval_acc"] = acc()
        log.debug("step %d: %s", step, m)
        if self.tracker:
            self.tracker.log_metrics({k: v for k, v in m.items() if v is not None}, step=step)

    def _save_and_register(self, res: SessionResult, final: bool) -> None:
        cfg = self.config
        self.head.save_dir(self.out)
        if final:
            atomic_write_text(self.out / SESSION_FILE, json.dumps(res.to_dict(), indent=2, default=str) + "\n")
        if not self.tracker:
            return
        version = log_head(self.tracker, self.out, self.head, register=cfg.register, prefix=cfg.registry_prefix,
                           extractor_version=self.source_extractor_version)
        if version:
            res.registered_versions.append(version)
        if final:
            self.tracker.log_metrics({k: v for k, v in res.to_dict().items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and k not in ("samples",)}, step=res.samples)
            self.tracker.log_artifact(self.out / SESSION_FILE)
            self.tracker.finish()


def log_head(tracker, head_dir: Path, head: OnlineHead, register: bool = True, prefix: str = "infantino",
             extractor_version: str | None = None) -> str | None:
    """Log the head (sklearn flavour + head_state.npz + head.infh) into the tracker's run; register it.

    Returns the registered version of <prefix>-head (None when not registering).
    """
    tracking.mlflow_env()
    import mlflow  # heavy: mlflow, ~1.3 s to import

    rh = head.to_head()
    mlflow.set_experiment(experiment_id=tracker.experiment_id)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.sklearn.log_model(
            head.mlp, name=f"head-v{rh.version}",
            extra_files=[str(head_dir / STATE_FILE), str(head_dir / HEAD_FILE)],
            skops_trusted_types=tracking.SKOPS_TRUSTED_TYPES,
            pip_requirements=tracking.pip_requirements("scikit-learn", "numpy"))
    if not register:
        return None
    _, head_model = tracking.model_names(prefix)
    tags = {"extractor_id": rh.extractor_id, "run_id": tracker.run_id, "head_version": str(rh.version),
            "head_sha256": rh.sha256, "source": "partial",
            "conformal_qhat": repr(rh.conformal_qhat), "coverage": repr(rh.coverage)}
    extractor_version = extractor_version or find_extractor_version(rh.extractor_id, prefix)
    if extractor_version:
        tags["extractor_version"] = str(extractor_version)
    mv = mlflow.register_model(info.model_uri, head_model, tags=tags)
    log.info("registered %s v%s (head version %d)", head_model, mv.version, rh.version)
    return str(mv.version)


def find_extractor_version(extractor_id: str, prefix: str = "infantino") -> str | None:
    """The newest registered <prefix>-extractor version tagged with this extractor_id (None if there is none)."""
    if not extractor_id:
        return None
    name, _ = tracking.model_names(prefix)
    try:
        versions = tracking.mlflow_client().search_model_versions(f"name='{name}'")
    except Exception as e:  # no such model yet, or a store without search support
        log.debug("no %s versions: %s", name, e)
        return None
    hits = [v for v in versions if v.tags.get("extractor_id") == extractor_id]
    return str(max(hits, key=lambda v: int(v.version)).version) if hits else None


def _valid_embedding(x, dim: int) -> bool:
    a = np.asarray(x)
    return a.shape == (dim,) and a.dtype.kind in "fiu" and bool(np.all(np.isfinite(a)))


def _as_index(v) -> int:
    return label_index(_label_value(v))


def _truth(sample: Sample) -> int | None:
    """The class index a prediction is scored against: the label, or the top vote / top soft class."""
    try:
        t = make_target(sample.label, sample.labels, sample.soft_label, CLASSES, "majority"
                        if sample.labels is not None else "soft")
    except ValueError:
        return None  # learn_one will raise the clear error
    if t is None or np.sum(t == t.max()) > 1:
        return None
    return int(np.argmax(t))

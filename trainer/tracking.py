"""MLflow for the trainer: store selection, runs, model registry (infantino-extractor / infantino-head) and aliases.

Default store: embedded and local — `sqlite:///<cwd>/mlflow.db` with artifacts in `./mlartifacts` (next to
the database), so nothing touches the network. `MLFLOW_TRACKING_URI` or an explicit URI (e.g. a tracking
server) replaces it. Downstream code calls `resolve_extractor` / `resolve_head` with either a
`models:/<name>@champion` URI or a local path and gets local files back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable

from infantino.runtime.cachedir import CACHE_ENV
from infantino.runtime.cachedir import cache_dir as runtime_cache_dir
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.layout import EXTRACTOR_FILE, HEAD_FILE, HEAD_STATE_FILE, LEGACY_HEAD_STATE_FILE

from .realface_guard import OVERRIDE_FLAG, GuardPolicy, RealFaceAgreement, RealFaceRegression

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "infantino"
EXTRACTOR_MODEL = "infantino-extractor"
HEAD_MODEL = "infantino-head"
CHAMPION = "champion"
DEFAULT_EXPERIMENT = "infantino"
# MLPClassifier keeps its optimiser; skops refuses unknown types unless trusted explicitly.
SKOPS_TRUSTED_TYPES = ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
                       "sklearn.neural_network._stochastic_optimizers.SGDOptimizer"]
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/")
_state: dict[str, str | None] = {"uri": None, "artifact_root": None}


def mlflow_env() -> None:
    """No telemetry (it does DNS look-ups) and no tqdm bars from artifact downloads."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def normalize_uri(uri: str) -> str:
    """Accept MLflow URIs; turn a path to a .db file into sqlite:///...; refuse the file store MLflow 3 dropped."""
    uri = str(uri).strip()
    if not uri:
        raise InfantinoError("empty tracking URI")
    if _URI_RE.match(uri) and not uri.startswith("file:"):
        return uri
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):] if uri.startswith("file:")
                else uri)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path.expanduser().resolve()}"
    raise InfantinoError(f"tracking URI {uri!r} is a file store, which MLflow 3 refuses; use "
                         f"sqlite:///{(path.expanduser().resolve() / 'mlflow.db')} or a server URL (http://host:5000)")


def _artifact_root_for(uri: str, artifact_root: str | None) -> str | None:
    """Where new experiments keep artifacts: given, $INFANTINO_ARTIFACT_ROOT, or mlartifacts/ beside the SQLite file."""
    root = artifact_root or os.environ.get("INFANTINO_ARTIFACT_ROOT")
    if root:
        return root if _URI_RE.match(root) else Path(root).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides


def configure_tracking(uri: str | None = None, artifact_root: str | None = None) -> str:
    """Point MLflow (tracking and registry) at `uri`, $MLFLOW_TRACKING_URI, or the local SQLite default."""
    mlflow_env()
    import mlflow  # heavy: mlflow, ~1.3 s to import

    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    chosen = normalize_uri(chosen)
    if chosen.startswith("sqlite:///"):
        Path(chosen[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(chosen)
    mlflow.set_registry_uri(chosen)
    _state["uri"] = chosen
    _state["artifact_root"] = artifact_root
    log.debug("MLflow tracking at %s (artifacts %s)", chosen,
              _artifact_root_for(chosen, artifact_root) or "server default")
    return chosen


def _ensure_configured() -> None:
    """Adopt a URI the caller already gave MLflow (mlflow.set_tracking_uri), else configure the default."""
    if _state["uri"] is not None:
        return
    from mlflow.tracking._tracking_service import utils as tracking_utils  # heavy: mlflow, ~1.3 s to import

    if tracking_utils.is_tracking_uri_set():
        import mlflow  # heavy: mlflow, ~1.3 s to import

        mlflow_env()
        uri = mlflow.get_tracking_uri()
        _state["uri"] = uri
    else:
        configure_tracking()


def _uri() -> str:
    """The tracking URI MLflow uses right now (whoever set it)."""
    _ensure_configured()
    import mlflow  # heavy: mlflow, ~1.3 s to import

    return mlflow.get_tracking_uri()


def mlflow_client():
    _ensure_configured()
    from mlflow import MlflowClient  # heavy: mlflow, ~1.3 s to import

    return MlflowClient()


def ensure_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, creating it (with the local artifact root) when missing."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow, ~1.3 s to import

    client = mlflow_client()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_root_for(_uri(), _state["artifact_root"]))
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise InfantinoError(f"MLflow experiment {name!r} is deleted; restore it or choose another --experiment")
    return exp.experiment_id


def model_names(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """Registered model names of a model family: (<prefix>-extractor, <prefix>-head)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", prefix or ""):
        raise ValueError(f"registry prefix must be letters, digits, '.', '_' or '-', got {prefix!r}")
    return f"{prefix}-extractor", f"{prefix}-head"


def pip_requirements(*dists: str) -> list[str]:
    """Pinned pip requirements for log_model (explicit: inferring them costs ~15 s and imports a lot)."""
    out = []
    for d in dists:
        try:
            out.append(f"{d}=={metadata.version(d).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(d)
    return out


class FitTracker:
    """One MLflow run of `fit`: params, per-epoch metrics, artefacts, logged and registered models."""

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, run_id: str | None = None,
                 run_name: str | None = None, tags: dict | None = None):
        self.uri = configure_tracking(uri)
        self.client = mlflow_client()
        self.experiment_id = ensure_experiment(experiment)
        self.run_id = None
        if run_id:
            try:
                run = self.client.get_run(run_id)
                if run.info.experiment_id == self.experiment_id:
                    self.run_id = run_id
                    self.client.update_run(run_id, status="RUNNING")
                    log.info("resuming MLflow run %s", run_id)
            except Exception:  # the store changed: start afresh
                log.warning("MLflow run %s not found in %s; starting a new run", run_id, self.uri)
        if self.run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
            self.run_id = run.info.run_id
        self._logged_params = set(self.client.get_run(self.run_id).data.params)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param  # heavy: mlflow, ~1.3 s to import

        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in self._logged_params]
        if new:
            self.client.log_batch(self.run_id, params=new)
            self._logged_params.update(p.key for p in new)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric  # heavy: mlflow, ~1.3 s to import

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_models(self, extractor_ckpt: Path, model, head_dir: Path, mlp, *, extractor_id: str,
                   head_version: int, head_sha256: str, register: bool = True, extra_tags: dict | None = None,
                   prefix: str = DEFAULT_PREFIX, version_metrics: dict | None = None) -> dict:
        """Log the extractor (PyTorch flavour + extractor.pt) and head (sklearn flavour + head files); register both.

        The head version carries tag `extractor_version` (and `extractor_id`); `version_metrics` (the saved
        checkpoint's, not the last epoch's) become tags of both versions, which `promote` reads first. The
        first registered pair becomes `champion` when the models have none yet. Returns the registered versions.
        """
        mlflow_env()
        import mlflow  # heavy: mlflow, ~1.3 s to import

        extractor_model, head_model = model_names(prefix)
        out = {"extractor_version": None, "head_version": None, "extractor_model_uri": None, "head_model_uri": None}
        # Pickled module, not MLflow's default pt2 (torch.export), which not every timm model survives; the
        # canonical artefact is extractor.pt anyway. Silence the per-call warning about pickles.
        pt_log = logging.getLogger("mlflow.pytorch")
        level = pt_log.level
        pt_log.setLevel(logging.ERROR)
        try:
            # The fluent API checks its process-global active experiment against the run's: align them, so an
            # earlier mlflow.set_experiment() elsewhere in the process cannot make this fail.
            mlflow.set_experiment(experiment_id=self.experiment_id)
            with mlflow.start_run(run_id=self.run_id):
                e_info = mlflow.pytorch.log_model(
                    model, name="extractor", extra_files=[str(extractor_ckpt)], serialization_format="pickle",
                    pip_requirements=pip_requirements("torch", "timm", "numpy"))
                h_info = mlflow.sklearn.log_model(
                    mlp, name="head", extra_files=[str(head_dir / HEAD_STATE_FILE), str(head_dir / HEAD_FILE)],
                    skops_trusted_types=SKOPS_TRUSTED_TYPES, pip_requirements=pip_requirements("scikit-learn", "numpy"))
        finally:
            pt_log.setLevel(level)
        out["extractor_model_uri"], out["head_model_uri"] = e_info.model_uri, h_info.model_uri
        if not register:
            return out
        tags = {"extractor_id": extractor_id, "run_id": self.run_id, **(extra_tags or {}),
                **{k: repr(float(v)) for k, v in (version_metrics or {}).items() if isinstance(v, (int, float))}}
        ev = mlflow.register_model(e_info.model_uri, extractor_model, tags=tags)
        hv = mlflow.register_model(h_info.model_uri, head_model, tags={
            **tags, "extractor_version": str(ev.version), "head_version": str(head_version),
            "head_sha256": head_sha256})
        out["extractor_version"], out["head_version"] = str(ev.version), str(hv.version)
        log.info("registered %s v%s and %s v%s", extractor_model, ev.version, head_model, hv.version)
        if _guard_problems(version_metrics or {}):
            log.warning("%s v%s is not made @%s automatically: it has no passing real-face agreement",
                        extractor_model, ev.version, CHAMPION)
        elif _alias_version(self.client, extractor_model, CHAMPION) is None:
            self.client.set_registered_model_alias(extractor_model, CHAMPION, ev.version)
            self.client.set_registered_model_alias(head_model, CHAMPION, hv.version)
            log.info("no champion yet: %s v%s and %s v%s are now @%s", extractor_model, ev.version, head_model,
                     hv.version, CHAMPION)
        return out

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException  # heavy: mlflow, ~1.3 s to import

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass
class Promotion:
    """What `promote` chose: versions now holding the alias and the metric value that decided."""

    alias: str
    metric: str | None
    extractor_version: str
    head_version: str
    value: float | None


def real_face_problems(version) -> list[str]:
    """Why a registered version fails the real-face guard (its realface_* tags; see trainer.realface_guard)."""
    return _guard_problems(version.tags)


def _guard_problems(values: dict) -> list[str]:
    """The real-face guard's verdict on recorded figures (version tags or version metrics): [] = passes."""
    agree, conf, base = (_float(values.get(k)) for k in ("realface_agreement", "realface_agreement_confident",
                                                          "realface_baseline"))
    if agree is None or conf is None:
        return ["no real-face agreement recorded (trained with --no-real-face-guard or by an older version)"]
    return GuardPolicy().problems(RealFaceAgreement(all=agree, confident=conf, n=0, n_confident=1, baseline=base))


def promote(metric: str | None = "val_f1", mode: str = "auto", alias: str = CHAMPION,
            version: str | int | None = None, prefix: str = DEFAULT_PREFIX,
            allow_real_face_regression: bool = False) -> Promotion:
    """Give `alias` to the best infantino-extractor version by a run metric (or to `version`) and to its head.

    mode: "max", "min", or "auto" (min for metrics named *loss*/*error*, else max); ties go to the newest
    version. The head is the best (then newest) infantino-head version tagged with that extractor_version.
    The real-face guard: a head that fails it is never chosen (RealFaceRegression when none passes or the
    requested `version` fails), unless allow_real_face_regression.
    """
    EXTRACTOR_MODEL, HEAD_MODEL = model_names(prefix)  # noqa: N806 - shadow the defaults
    client = mlflow_client()
    if mode not in ("auto", "max", "min"):
        raise ValueError(f"mode must be auto, max or min, got {mode!r}")
    versions = _versions(client, EXTRACTOR_MODEL)
    if not versions:
        raise InfantinoError(f"no registered versions of {EXTRACTOR_MODEL} in {_uri()}; run `infantino-train "
                             "fit` first")
    lower = mode == "min" or (mode == "auto" and metric is not None and re.search(r"loss|error", metric) is not None)
    value = None
    if version is not None:
        chosen = next((v for v in versions if str(v.version) == str(version)), None)
        if chosen is None:
            raise InfantinoError(f"{EXTRACTOR_MODEL} has no version {version}; versions: "
                                 f"{', '.join(str(v.version) for v in versions)}")
        value = _version_metric(client, chosen, metric) if metric else None
    else:
        if not metric:
            raise ValueError("give --metric or --version")
        scored = [(v, _version_metric(client, v, metric)) for v in versions]
        scored = [(v, m) for v, m in scored if m is not None]
        if scored and not allow_real_face_regression:
            refused = {str(v.version): real_face_problems(v) for v, _ in scored}
            refused = {k: p for k, p in refused.items() if p}
            for k, p in refused.items():
                log.warning("%s v%s is not a candidate: the real-face guard refuses it (%s)", EXTRACTOR_MODEL, k,
                            "; ".join(p))
            if len(refused) == len(scored):
                raise RealFaceRegression(
                    f"every {EXTRACTOR_MODEL} version with {metric!r} fails the real-face guard ("
                    + "; ".join(f"v{k}: {', '.join(p)}" for k, p in refused.items())
                    + f"); nothing changed. Pass {OVERRIDE_FLAG} to promote anyway.")
            scored = [(v, m) for v, m in scored if str(v.version) not in refused]
        if not scored:
            known = sorted({k for v in versions for k in _run_metrics(client, v.run_id)}
                           | {k for v in versions for k, t in v.tags.items() if _float(t) is not None})
            raise InfantinoError(f"no {EXTRACTOR_MODEL} version has metric {metric!r}; metrics logged: "
                                 f"{', '.join(known) or 'none'}")
        chosen, value = max(scored, key=lambda vm: ((-vm[1] if lower else vm[1]), int(vm[0].version)))
    heads = [h for h in _versions(client, HEAD_MODEL) if h.tags.get("extractor_version") == str(chosen.version)]
    if not heads:
        raise InfantinoError(f"{EXTRACTOR_MODEL} v{chosen.version} has no {HEAD_MODEL} version tagged "
                             f"extractor_version={chosen.version}; nothing changed")
    if not allow_real_face_regression:
        failing = {h.version: real_face_problems(h) for h in heads}
        passing = [h for h in heads if not failing[h.version]]
        if not passing:
            why = "; ".join(f"{HEAD_MODEL} v{v}: {', '.join(p)}" for v, p in failing.items())
            raise RealFaceRegression(f"{EXTRACTOR_MODEL} v{chosen.version} is refused by the real-face guard ({why}); "
                                     f"nothing changed. Pass {OVERRIDE_FLAG} to promote it anyway.")
        heads = passing

    def head_key(h):
        m = _version_metric(client, h, metric) if metric else None
        return (m is not None, (-m if lower else m) if m is not None else 0.0, int(h.version))

    head = max(heads, key=head_key)
    client.set_registered_model_alias(EXTRACTOR_MODEL, alias, chosen.version)
    client.set_registered_model_alias(HEAD_MODEL, alias, head.version)
    log.info("%s v%s and %s v%s are now @%s (%s=%s)", EXTRACTOR_MODEL, chosen.version, HEAD_MODEL, head.version,
             alias, metric, value)
    return Promotion(alias=alias, metric=metric, extractor_version=str(chosen.version),
                     head_version=str(head.version), value=value)


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException  # heavy: mlflow, ~1.3 s to import

    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        return []


def _run_metrics(client, run_id: str | None) -> dict:
    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.metrics)
    except Exception:
        return {}


def _float(s) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _version_metric(client, version, metric: str | None) -> float | None:
    """The version's own metric tag (its checkpoint's value), else its run's latest value of `metric`."""
    if not metric:
        return None
    tagged = _float(version.tags.get(metric))
    if tagged is not None:
        return tagged
    return _run_metrics(client, version.run_id).get(metric)


# ---- resolving models to local files ---------------------------------------------------------------------

MODELS_URI = re.compile(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))/?$")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, alias, version); None for anything else."""
    m = MODELS_URI.match(str(uri))
    return m.groups() if m else None


def is_mlflow_uri(s: str) -> bool:
    """models:/..., runs:/..., s3://..., http(s)://... (not a local path)."""
    return bool(_URI_RE.match(str(s))) and not str(s).startswith("file:")


def cache_dir() -> Path:
    """Registry downloads: $INFANTINO_CACHE_DIR, else beside a local SQLite store, else ./.infantino-cache."""
    if os.environ.get(CACHE_ENV):
        return runtime_cache_dir("models")
    uri = _uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / ".infantino-cache" / "models"
    return Path.cwd() / ".infantino-cache" / "models"


def _download(uri: str, dst: str | os.PathLike | None = None) -> Path:
    """Download an MLflow artefact URI; registry versions are cached (a version's files never change)."""
    _ensure_configured()
    # heavy: mlflow, ~1.3 s to import:
    import mlflow
    from mlflow.exceptions import MlflowException

    key = None
    m = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))/?$", uri)
    try:
        if m and dst is None:
            name, alias, num = m.groups()
            client = mlflow_client()
            num = str(client.get_model_version_by_alias(name, alias).version) if alias else num
            store = hashlib.sha1(_uri().encode()).hexdigest()[:10]
            key = cache_dir() / store / f"{name}-v{num}"
            if (key / ".complete").is_file():
                return key
            uri = f"models:/{name}/{num}"
        if dst is not None:
            Path(dst).mkdir(parents=True, exist_ok=True)
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if key is None:
            return got
        (got / ".complete").write_text(uri + "\n")
        key.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(got, key)
        except OSError:  # another process finished first
            if not (key / ".complete").is_file():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
        return key
    except MlflowException as e:
        raise InfantinoError(f"cannot fetch {uri} from {_uri()}: {e.message}") from None


def _find(root: Path, names: Iterable[str]) -> Path | None:
    """The shallowest folder under root that holds every file in `names`."""
    names = list(names)
    best = None
    for dirpath, _, files in os.walk(root):
        if all(n in files for n in names):
            depth = len(Path(dirpath).relative_to(root).parts)
            if best is None or depth < best[0]:
                best = (depth, Path(dirpath))
    return None if best is None else best[1]


def _local_or_downloaded(src: str, dst, what: str, hint: str, file_ok: bool) -> Path:
    """The folder to search for `what`: an MLflow URI downloaded, or a local folder (or a file's folder)."""
    if is_mlflow_uri(src):
        return _download(src, dst)
    p = Path(src).expanduser()
    if p.is_file() and file_ok:
        return p
    if p.is_dir():
        return p
    raise FileNotFoundError(f"{what} not found: {src}: no such file or folder ({hint})")


def _resolve_file(src: str | os.PathLike, dst, name: str, what: str, registered: str) -> Path:
    """`name` from a file, a folder holding one (the shallowest), or an MLflow URI."""
    s = str(src)
    where = _local_or_downloaded(s, dst, what, f"give a {name}, a folder holding one, or models:/{registered}@"
                                 f"{CHAMPION}", file_ok=True)
    if where.is_file():
        return where
    d = _find(where, [name])
    if d is None:
        raise InfantinoError(f"no {name} in {s}")
    return d / name


def resolve_extractor(uri_or_path: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """The one resolver of extractor sources: extractor.pt from models:/infantino-extractor@champion, runs:/...,
    a file, or a folder holding one (the shallowest)."""
    return _resolve_file(uri_or_path, dst, EXTRACTOR_FILE, "extractor", EXTRACTOR_MODEL)


def resolve_head_file(uri_or_path: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """head.infh from a file, a folder holding one (the shallowest), or models:/infantino-head@champion."""
    return _resolve_file(uri_or_path, dst, HEAD_FILE, "head", HEAD_MODEL)


def resolve_head(uri_or_path: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """The folder holding an online head's state and head.infh (to continue learning): from
    models:/infantino-head@champion or a local path (a file means its folder). A folder whose state is only the
    legacy head_state.pkl counts too (OnlineHead.load migrates it when trusted); the shallowest folder wins."""
    s = str(uri_or_path)
    p = Path(s).expanduser()
    src = str(p.parent) if not is_mlflow_uri(s) and p.is_file() else s
    where = _local_or_downloaded(src, dst, "head", f"give a folder holding {HEAD_STATE_FILE} and {HEAD_FILE}, "
                                 f"or models:/{HEAD_MODEL}@{CHAMPION}", file_ok=False)
    found = [d for d in (_find(where, [HEAD_STATE_FILE, HEAD_FILE]), _find(where, [LEGACY_HEAD_STATE_FILE, HEAD_FILE]))
             if d is not None]
    if not found:
        raise InfantinoError(f"no {HEAD_STATE_FILE} (or legacy {LEGACY_HEAD_STATE_FILE}) + {HEAD_FILE} in {s}")
    return min(found, key=lambda d: len(d.relative_to(where).parts))


def model_version_info(name: str, alias: str = CHAMPION) -> dict:
    """Version number, run id and tags of `name@alias` (e.g. which extractor a head belongs to)."""
    client = mlflow_client()
    from mlflow.exceptions import MlflowException  # heavy: mlflow, ~1.3 s to import

    try:
        v = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        raise InfantinoError(f"{name}@{alias} not found in {_uri()}: {e.message}") from None
    return {"name": name, "version": str(v.version), "run_id": v.run_id, "tags": dict(v.tags), "source": v.source}

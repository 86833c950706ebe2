"""Optional MLflow logging of a benchmark run: machine as params, each row's figures as metrics, files as artifacts."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from infantino.runtime.contract.errors import BackendUnavailable

log = logging.getLogger(__name__)

ROW_METRICS = ("p50_ms", "p95_ms", "p99_ms", "p50_ms_per_image", "images_per_s", "speedup_vs_baseline",
               "size_mb", "rss_peak_mb", "top1_agreement", "top1_accuracy", "cosine_mean", "peak_fraction",
               "fps", "share", "mean_ms")


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def _experiment(mlflow, uri: Optional[str], name: str) -> str:
    """Tracking URI and experiment id; a new experiment keeps its artifacts beside the SQLite file (mlartifacts/),
    never in ./mlruns of whatever directory the benchmark was started from."""
    try:
        from infantino.trainer.tracking import configure_tracking, ensure_experiment  # optional (see except)
    except ImportError:  # benchmarks without the trainer part: the same convention, done here
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        root = None
        if uri.startswith("sqlite:///"):
            root = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=root)
    configure_tracking(uri)
    return ensure_experiment(name)


def log_report(report: dict, uri: Optional[str], experiment: str, files: Sequence[Path] = ()) -> str:
    """Log `report` as one MLflow run (sqlite store by default); returns the run id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # heavy: mlflow, ~1.3 s to import
    except ImportError as e:
        raise BackendUnavailable("--mlflow needs mlflow: pip install 'infantino[train]'") from e
    exp_id = _experiment(mlflow, uri, experiment)
    m = report.get("machine", {})
    with mlflow.start_run(experiment_id=exp_id, run_name=f"bench-{report.get('kind')}") as run:
        params = {"kind": report.get("kind"), "cpu_model": m.get("cpu_model"), "logical_cores": m.get("logical_cores"),
                  "threads": m.get("threads"), "hostname": m.get("hostname")}
        for lib, v in (m.get("libraries") or {}).items():
            if v:
                params[f"lib.{lib}"] = v
        for k, v in (report.get("config") or {}).items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                params[f"config.{k}"] = v
        mlflow.log_params({k: ("" if v is None else str(v)[:500]) for k, v in params.items()})
        mlflow.set_tag("infantino.bench.schema", report.get("schema"))
        metrics = {}
        for r in report.get("rows", []):
            key = r.get("key") or r.get("name") or r.get("stage")
            if not key:
                continue
            for name in ROW_METRICS:
                v = r.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics[_metric_name(f"{key}.{name}")] = float(v)
        for k, v in (report.get("summary") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[_metric_name(f"summary.{k}")] = float(v)
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(m, "machine.json")
        for f in files:
            mlflow.log_artifact(str(f))
        log.info("logged benchmark run %s to MLflow (%s)", run.info.run_id, mlflow.get_tracking_uri())
        return run.info.run_id

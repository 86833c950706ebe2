"""Move the `champion` alias (or another) to the best registered extractor version by a run metric, and to the
head version registered for that extractor. Downstream parts load models:/infantino-extractor@champion and
models:/infantino-head@champion."""

from __future__ import annotations

from infantino.trainer import tracking

HELP = "give the champion alias to the best registered extractor + head"


def add_arguments(p) -> None:
    p.add_argument("--metric", default="val_f1",
                   help="metric that decides (default val_f1; e.g. head_acc, val_loss)")
    p.add_argument("--mode", choices=("auto", "max", "min"), default="auto",
                   help="higher or lower is better (auto: lower for *loss*/*error* metrics)")
    p.add_argument("--version", help="promote this extractor version instead of the best one")
    p.add_argument("--alias", default="champion", help="alias to set (default champion)")
    p.add_argument("--registry-prefix", default="infantino",
                   help="model family: <prefix>-extractor and <prefix>-head (default infantino)")
    p.add_argument("--allow-real-face-regression", action="store_true",
                   help="promote even a model that agrees less with the FER-2013 teacher on held-out real faces "
                        "than the guard allows (docs/real-faces.md)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")


def run(args) -> int:
    tracking.configure_tracking(args.tracking_uri)
    p = tracking.promote(metric=args.metric, mode=args.mode, alias=args.alias, version=args.version,
                          prefix=args.registry_prefix, allow_real_face_regression=args.allow_real_face_regression)
    value = f" ({p.metric} = {p.value:.4f})" if p.value is not None else ""
    ext, head = tracking.model_names(args.registry_prefix)
    print(f"{ext} v{p.extractor_version} and {head} v{p.head_version} "
          f"are now @{p.alias}{value}")
    return 0

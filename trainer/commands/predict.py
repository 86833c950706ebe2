"""Predict the expression of the largest face in each image (Haar cascade; the whole image if none is found)
with an extractor and a head, and print label, entropy and the conformal prediction set."""

from __future__ import annotations

import json
import os

from infantino.trainer import tracking
from infantino.trainer.predictor import Predictor, resolve_model_pair

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HELP = "predict the expression in image files (label, entropy, prediction set)"


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    p.add_argument("--head", help="head folder (head.infh) or MLflow URI (default models:/<prefix>-head@champion)")
    p.add_argument("--extractor", help="extractor.pt, a folder holding it, or an MLflow URI (default: beside the "
                                       "head, else the registry's)")
    p.add_argument("--no-face", dest="face", action="store_false", help="do not look for a face: use whole images")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--registry-prefix", default="infantino", help="model family <prefix>-extractor/-head")
    p.add_argument("--json", action="store_true", help="one JSON object per image")


def run(args) -> int:
    if args.tracking_uri or not args.head or tracking.is_mlflow_uri(args.head):
        tracking.configure_tracking(args.tracking_uri)
    ext, head_dir = resolve_model_pair(args.head, args.extractor, args.registry_prefix)
    pred = Predictor(ext, head_dir, face=args.face)
    for path in args.images:
        r = pred.predict_image(path)
        u = r.uncertainty()
        if args.json:
            print(json.dumps({"image": str(path), "label": r.prediction.label, **u}))
        else:
            top = r.prediction.probabilities[r.prediction.label]
            face = "face " + "x".join(map(str, u["face_box"][2:])) if u["face_box"] else "no face: whole image"
            cov = f" at {u['coverage']:.0%}" if u["coverage"] else ""
            print(f"{path}: {r.prediction.label} (p={top:.2f}, entropy {u['entropy']:.2f} nats, "
                  f"set{cov} {{{', '.join(u['prediction_set'])}}}, head v{u['head_version']}, {face})")
    return 0

"""Online learning over a stream of labelled samples: OnlineHead.learn_one per sample (replay, conformal
recalibration, a new head version per update), tracked as one MLflow run with a step-indexed accuracy curve;
the resulting head is written to --out (head_state.npz, head.infh, session.json) and registered as
<prefix>-head at the end (and every --register-every updates).

--data: an image folder (one sub-folder per class, face crops; embedded with the head's extractor), a .npz with
`embeddings` and `labels`, a .jsonl file, or - for JSON lines on stdin ({"embedding": [...64], "label": "happy"}
or {"image": "face.png", "labels": ["sad", "sad", "fear"]} or {"embedding": [...], "soft_label": {...}})."""

from __future__ import annotations

import json
import os

from infantino.trainer.online_session import OnlineSession, SessionConfig

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HELP = "learn online from a stream of labelled samples (folder, .npz, .jsonl or stdin)"


def add_arguments(p) -> None:
    d = SessionConfig()
    p.add_argument("--data", required=True, help="image folder, .npz, .jsonl, or - (JSON lines on stdin)")
    p.add_argument("--head", help="head folder (with head_state.npz) or MLflow URI "
                                  "(default models:/<prefix>-head@champion)")
    p.add_argument("--migrate-legacy-state", action="store_true",
                   help="the head's state is a legacy head_state.pkl you trust (a pickle runs code when loaded): "
                        "read it once and write head_state.npz beside it")
    p.add_argument("--extractor", help="extractor.pt, a folder holding it, or an MLflow URI (default: beside "
                                       "the head, else the registry's matching/champion extractor)")
    p.add_argument("--out", default=d.out, help=f"output folder for the learned head (default {d.out})")
    p.add_argument("--eval-data", help="held-out image folder or .npz: accuracy curve every --eval-every samples")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"curve step (default {d.eval_every})")
    p.add_argument("--register-every", type=int, default=0,
                   help="also register the head every N updates (default 0: once, at the end)")
    p.add_argument("--limit", type=int, help="stop after N samples")
    p.add_argument("--seed", type=int, default=0, help="order of an image-folder stream")
    p.add_argument("--replay-mix", type=int, help="replayed samples per update (0 = naive partial_fit)")
    p.add_argument("--replay-policy", choices=("class_balanced", "reservoir"), help="replay buffer admission")
    p.add_argument("--anchor-strength", type=float, help="pull toward the anchor head per update (0 = off)")
    p.add_argument("--coverage", type=float, help="conformal coverage level, e.g. 0.9")
    p.add_argument("--calib-holdout", type=float, help="share of samples kept for calibration (0..1)")
    p.add_argument("--ambiguity", choices=("soft", "majority"), help="how annotators' labels are combined")
    p.add_argument("--learning-rate", type=float, help="Adam step size of online updates")
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample (default: skip it)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--registry-prefix", default=d.registry_prefix, help="registered model <prefix>-head")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow")
    p.add_argument("--no-register", dest="register", action="store_false", help="log the run, register nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    settings = {k: v for k, v in {
        "replay_mix": args.replay_mix, "replay_policy": args.replay_policy, "anchor_strength": args.anchor_strength,
        "coverage": args.coverage, "calib_holdout": args.calib_holdout, "ambiguity": args.ambiguity,
        "online_learning_rate": args.learning_rate}.items() if v is not None}
    cfg = SessionConfig(head=args.head, extractor=args.extractor, out=args.out, eval_data=args.eval_data,
                        eval_every=args.eval_every, register_every=args.register_every, limit=args.limit,
                        seed=args.seed, head_settings=settings, tracking=args.tracking,
                        tracking_uri=args.tracking_uri, experiment=args.experiment,
                        registry_prefix=args.registry_prefix, register=args.register, strict=args.strict,
                        migrate_legacy_state=args.migrate_legacy_state)
    res = OnlineSession(cfg).run(args.data)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    pq = f"{res.prequential_accuracy:.3f}" if res.prequential_accuracy is not None else "n/a"
    print(f"{res.samples} samples {res.routes}: head v{res.start_version} -> v{res.end_version}, "
          f"prequential accuracy {pq}, learn_one p50 {res.learn_ms_p50 or 0:.2f} ms")
    if res.eval_before is not None:
        print(f"held-out accuracy {res.eval_before:.3f} -> {res.eval_after:.3f}")
    print(f"head written to {res.out_dir}" + (f"; MLflow run {res.run_id}" if res.run_id else "")
          + (f"; registered version(s) {', '.join(res.registered_versions)}" if res.registered_versions else ""))
    return 0

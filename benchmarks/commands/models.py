"""Time the extractor on every backend x precision x batch of a bundle, interleaved, with size, memory and quality.

Rows: each runtime backend (onnxruntime, tflite, tensorrt) for each of its artifacts in the bundle, PyTorch
eager and torch.compile from the extractor checkpoint (--checkpoint; the baseline of the speed-up column),
and for a mini_xception bundle the fer package's own TFLite of the same network as a peer row. A row that
cannot run keeps its place in the table with the reason; the others go on. Quality: top-1 accuracy on a
labelled folder (--data) or parity with the bundle's PyTorch reference outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.backends.registry import get_backend_class, list_backends
from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.preprocess import preprocess

from .. import common
from .. import report as rpt
from ..accuracy import accuracy, load_labelled_folder, parity, to_layout
from ..engines import (PEER_BACKENDS, TORCH_BACKENDS, Engine, EngineFailed, fer_tflite_engine,
                       load_torch_model, runtime_engine, torch_engine)
from ..flops import onnx_flops, torch_flops
from ..machine import describe, load_average, measure_peak_flops
from ..rss import RssProbe
from ..timing import TimedRow, run_interleaved, summarize

log = logging.getLogger(__name__)

HELP = "time the extractor per backend x precision x batch (latency, throughput, size, RSS, quality)"
PRECISIONS = ("fp32", "fp16", "int8")
QUALITY_BATCH = 32

CSV_COLUMNS = ("key", "bundle", "model", "img_size", "backend", "precision", "batch", "status", "reason", "file",
               "size_mb", "rss_peak_mb", "rss_delta_mb", "n", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms",
               "p50_ms_per_image", "p95_ms_per_image", "p99_ms_per_image", "images_per_s", "speedup_vs_baseline",
               "baseline", "flops_per_image", "peak_fraction", "quality_mode", "quality_n", "quality_reference",
               "top1_accuracy", "top1_agreement", "logit_agreement", "cosine_mean", "cosine_min", "max_abs_diff",
               "rel_err", "quality_error", "info")

TABLE_COLUMNS = (("key", "row", ""), ("status", "status", ""), ("p50_ms", "p50 ms", ".2f"),
                 ("p95_ms", "p95", ".2f"), ("p99_ms", "p99", ".2f"), ("p50_ms_per_image", "ms/img", ".3f"),
                 ("images_per_s", "img/s", ".1f"), ("speedup_vs_baseline", "vs base", "x"),
                 ("size_mb", "MB", ".2f"), ("rss_peak_mb", "peak RSS MB", ".0f"),
                 ("quality", "quality (%)", ""), ("peak_fraction", "% peak", "pct"), ("n", "n", ""))


def add_arguments(p) -> None:
    p.add_argument("--bundle", action="append", required=True, type=Path, metavar="B",
                   help="bundle directory or .tar (repeat to compare several bundles in one interleaved run)")
    p.add_argument("--public-key", default=None, metavar="PEM",
                   help="public key that signed the bundle (default $INFANTINO_PUBLIC_KEY)")
    p.add_argument("--backends", default="all",
                   help="comma list of onnxruntime, tflite, tensorrt, torch, torch-compile, fer-tflite, or all "
                        "(default all; fer-tflite is in 'all' for mini_xception bundles)")
    p.add_argument("--precisions", default="all", help="comma list of fp32, fp16, int8, or all (default all)")
    p.add_argument("--batch", type=common.int_list, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    p.add_argument("--img-size", type=common.int_list, default=None, metavar="PX[,PX]",
                   help="input sizes (default: each bundle's own). PyTorch rows run at any size; compiled "
                        "artifacts only at their own (other sizes become failed rows saying so)")
    common.add_timing_arguments(p, warmup=5, seconds=20.0)
    q = p.add_argument_group("baselines and quality")
    q.add_argument("--checkpoint", action="append", type=Path, default=None, metavar="PT",
                   help="extractor checkpoint (trainer's extractor.pt) for the PyTorch rows; matched to bundles "
                        "by extractor_id (repeatable)")
    q.add_argument("--baseline", default="torch",
                   help="backend whose p50 per image is the denominator of 'vs base' (default torch; "
                        "falls back to onnxruntime/fp32 when that row is missing or failed)")
    q.add_argument("--compile-limit", type=common.positive_float, default=300.0, metavar="S",
                   help="torch.compile row fails if compiling its input shapes takes longer (default 300 s)")
    q.add_argument("--fer-tflite", type=Path, default=None, metavar="PATH",
                   help="the fer package's emotion_model_quantized.tflite (default: the trainer's cache, "
                        "fetched if missing)")
    q.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="labelled face crops DIR/<class>/*.png: report top-1 accuracy through the bundle head")
    q.add_argument("--data-limit", type=common.positive_int, default=None, metavar="N",
                   help="at most N images per class from --data")
    q.add_argument("--peak-gflops", type=common.positive_float, default=None, metavar="G",
                   help="the machine's peak for the '%% peak' column (GFLOP/s, e.g. measured on the idle machine) "
                        "instead of measuring it")
    common.add_output_arguments(p)


# ---- planning ----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """One engine to build (or a failure already known) for one bundle at one input size."""

    bundle_idx: int
    size: int
    backend: str
    precision: str
    artifact: object = None
    failure: Optional[str] = None
    engine: Optional[Engine] = None
    rss: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    outputs: Optional[np.ndarray] = None  # outputs on the quality inputs (--data images or reference inputs)


@dataclass
class BundleCtx:
    path: Path
    bundle: object
    tag: str
    size: int  # compiled input size (height)
    sizes: list[int]
    ref_x: Optional[np.ndarray] = None
    ref_e: Optional[np.ndarray] = None
    data_x: Optional[np.ndarray] = None
    torch_model: object = None
    checkpoint: Optional[Path] = None
    checkpoint_note: Optional[str] = None
    flops: Optional[dict] = None
    logits_dims: Optional[int] = None
    notes: list[str] = field(default_factory=list)


def _valid_backends() -> list[str]:
    return list_backends() + list(TORCH_BACKENDS) + list(PEER_BACKENDS)


def _validate(args) -> None:
    for b in args.bundle:
        if not b.exists():
            raise FileNotFoundError(f"--bundle: no such bundle directory or .tar: {b}")
    for c in args.checkpoint or []:
        if not c.is_file():
            raise FileNotFoundError(f"--checkpoint: no such file: {c}")
    if args.data is not None and not args.data.is_dir():
        raise FileNotFoundError(f"--data: no such directory: {args.data}")
    if args.fer_tflite is not None and not args.fer_tflite.is_file():
        raise FileNotFoundError(f"--fer-tflite: no such file: {args.fer_tflite}")
    common.check_output_paths(args)


def _load_bundles(args, threads) -> list[BundleCtx]:
    ctxs, tags = [], set()
    for i, path in enumerate(args.bundle):
        b = load_bundle(path, public_key=args.public_key)
        h, w = b.manifest.preprocess.input_size
        tag = path.name if path.is_dir() else path.stem
        if tag in tags:
            tag = f"{tag}#{i}"
        tags.add(tag)
        ctx = BundleCtx(path=path, bundle=b, tag=tag, size=h, sizes=list(args.img_size or [h]))
        if h != w:
            ctx.notes.append(f"{tag}: non-square input {h}x{w}; --img-size sets the height and keeps the ratio")
        try:
            ctx.ref_x, ctx.ref_e = b.reference()
        except Exception as e:  # BundleError: no reference; timing uses seeded random inputs
            ctx.notes.append(f"{tag}: no reference outputs ({e}); timing uses random inputs, no parity")
        if b.manifest.model.backbone == "mini_xception":
            ctx.logits_dims = len(b.manifest.classes)
        ctxs.append(ctx)
    return ctxs


def _attach_checkpoints(args, ctxs: list[BundleCtx], wanted: set[str]) -> None:
    """Load --checkpoint files and give each to the bundle with the same extractor_id."""
    if not (wanted & set(TORCH_BACKENDS)) or not args.checkpoint:
        return
    loaded = []
    for c in args.checkpoint:
        try:
            model, cfg, eid = load_torch_model(c)
        except EngineFailed as e:
            for ctx in ctxs:
                ctx.checkpoint_note = str(e)
            return
        loaded.append((c, model, eid))
    for c, model, eid in loaded:
        match = [x for x in ctxs if x.bundle.extractor_id == eid]
        if not match and len(ctxs) == 1 and len(loaded) == 1:
            match = ctxs
            ctxs[0].notes.append(f"checkpoint {c.name} has extractor_id {eid[:12]}… but the bundle has "
                                 f"{ctxs[0].bundle.extractor_id[:12]}…: parity of the PyTorch rows will show it")
        if not match:
            raise ValueError(f"--checkpoint {c}: its extractor_id {eid[:12]}… matches none of the bundles")
        for x in match:
            x.torch_model, x.checkpoint = model, c


def _count_flops(ctx: BundleCtx) -> None:
    onnx_art = next((a for a in ctx.bundle.manifest.artifacts if a.format == "onnx" and a.precision == "fp32"), None)
    try:
        if onnx_art is not None:
            ctx.flops = onnx_flops(ctx.bundle.artifact_path(onnx_art))
        elif ctx.torch_model is not None:
            c, h, w = _sample_shape(ctx, ctx.size)
            ctx.flops = torch_flops(ctx.torch_model, (1, c, h, w))
    except Exception as e:  # onnx missing or an exotic graph: no peak fraction, not a failed run
        ctx.notes.append(f"{ctx.tag}: FLOPs not counted ({type(e).__name__}: {e})")


def _sample_shape(ctx: BundleCtx, size: int) -> tuple[int, int, int]:
    h, w = ctx.bundle.manifest.preprocess.input_size
    c = ctx.bundle.manifest.preprocess.channels
    return c, size, max(8, round(w * size / h))


def _plans(ctx: BundleCtx, idx: int, backends: Optional[list[str]], precisions: Optional[list[str]]) -> list[Plan]:
    out: list[Plan] = []
    explicit = backends is not None
    names = backends if explicit else list_backends() + list(TORCH_BACKENDS) + (
        list(PEER_BACKENDS) if ctx.logits_dims else [])
    m = ctx.bundle.manifest
    for size in ctx.sizes:
        for name in names:
            if name in TORCH_BACKENDS:
                if precisions is not None and "fp32" not in precisions:
                    continue
                fail = None
                if ctx.torch_model is None:
                    fail = ctx.checkpoint_note or ("no --checkpoint given: the PyTorch rows need the extractor "
                                                   "checkpoint the bundle was compiled from")
                out.append(Plan(idx, size, name, "fp32", failure=fail))
                continue
            if name in PEER_BACKENDS:
                fail = None
                spec = m.preprocess
                if spec.color != "gray" or tuple(spec.input_size) != (64, 64) or size != 64:
                    fail = "the fer tflite takes 64x64 grayscale faces; this bundle's input is not that"
                out.append(Plan(idx, size, name, "dyn-int8", failure=fail))
                continue
            cls = get_backend_class(name)
            arts = [a for a in m.artifacts if a.format in cls.formats
                    and (precisions is None or a.precision in precisions)]
            missing_lib = cls.unavailable_reason()
            if missing_lib:  # one row for the backend, not one per artifact: the reason is the same
                out.append(Plan(idx, size, name, ",".join(sorted({a.precision for a in arts})) or "-",
                                failure=missing_lib))
                continue
            if not arts:
                have = ", ".join(sorted({f"{a.format}/{a.precision}" for a in m.artifacts}))
                want = "/".join(cls.formats) + (f" at {','.join(precisions)}" if precisions else "")
                out.append(Plan(idx, size, name, ",".join(precisions) if precisions else "-",
                                failure=f"bundle has no {want} artifact (it has {have})"))
                continue
            seen: dict[str, int] = {}
            for a in arts:
                seen[a.precision] = seen.get(a.precision, 0) + 1
            for a in arts:
                label = a.precision if seen[a.precision] == 1 else f"{a.precision}:{Path(a.file).stem}"
                fail = None
                if size != ctx.size:
                    fail = (f"{a.file} is compiled for {ctx.size}x{ctx.size}; compile a bundle at {size} px to "
                            f"measure it")
                out.append(Plan(idx, size, name, label, artifact=a, failure=fail))
    return out


# ---- inputs ------------------------------------------------------------------------------------------------
def _timing_input(ctx: BundleCtx, size: int, batch: int, layout: str, rng: np.random.Generator) -> np.ndarray:
    """`batch` reference images (tiled) at `size`, in `layout`; seeded normal noise when there is no reference."""
    c, h, w = _sample_shape(ctx, size)
    if ctx.ref_x is not None:
        x = ctx.ref_x[np.arange(batch) % len(ctx.ref_x)]
        if x.shape[2:] != (h, w):
            x = _resize_nchw(x, h, w)
    else:
        x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
    return to_layout(np.ascontiguousarray(x, np.float32), layout)


def _resize_nchw(x: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2  # optional: OpenCV (device/train extras)

    out = []
    for s in x:
        r = cv2.resize(s.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(r.reshape(h, w, -1).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _run_padded(engine: Engine, x_nchw: np.ndarray, chunk: int) -> np.ndarray:
    """Outputs over all of x in chunks of exactly `chunk` (the last one padded): no new input shapes."""
    outs = []
    for i in range(0, len(x_nchw), chunk):
        part = x_nchw[i:i + chunk]
        n = len(part)
        if n < chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - n, axis=0)])
        outs.append(np.asarray(engine.run(to_layout(part, engine.layout)), np.float32)[:n])
    return np.concatenate(outs)


# ---- the command -------------------------------------------------------------------------------------------
def run(args) -> int:
    _validate(args)
    backends = common.name_list(args.backends, _valid_backends(), "backends")
    precisions = common.name_list(args.precisions, PRECISIONS, "precisions")
    threads = common.default_threads(args)
    iters, seconds = common.timing_budget(args)
    batches = list(args.batch)

    machine = describe(threads=threads, peak=not args.no_peak and args.peak_gflops is None)
    if args.peak_gflops is not None and not args.no_peak:
        machine["peak"] = {"peak_gflops": args.peak_gflops, "method": "given with --peak-gflops"}
    ctxs = _load_bundles(args, threads)
    wanted = set(backends) if backends is not None else set(TORCH_BACKENDS)
    _attach_checkpoints(args, ctxs, wanted)
    labelled = None
    if args.data is not None:
        labelled = load_labelled_folder(args.data, ctxs[0].bundle.classes, args.data_limit)
        for ctx in ctxs:
            if list(ctx.bundle.classes) != list(labelled.classes):
                raise ValueError(f"--data: bundles have different class lists ({ctx.tag})")
            ctx.data_x = preprocess(labelled.images, ctx.bundle.manifest.preprocess, "NCHW")
    for ctx in ctxs:
        _count_flops(ctx)

    plans: list[Plan] = []
    for i, ctx in enumerate(ctxs):
        plans += _plans(ctx, i, backends, precisions)
    multi = len(ctxs) > 1 or any(len(c.sizes) > 1 for c in ctxs)
    quality_chunk = max(batches)

    # Build engines one by one, each with its own RSS probe (peak reset before loading), warmed at max batch.
    console = rpt.make_console(stderr=True)
    rng = np.random.default_rng(0)
    with console.status("loading backends") as status:
        for pl in plans:
            if pl.failure:
                continue
            ctx = ctxs[pl.bundle_idx]
            status.update(f"loading {ctx.tag} {pl.backend}/{pl.precision} @ {pl.size}px")
            try:
                with RssProbe() as probe:
                    pl.engine = _build(pl, ctx, args, threads, batches)
                    x = _timing_input(ctx, pl.size, max(batches), pl.engine.layout, rng)
                    pl.engine.run(x)  # first call: arenas, XNNPACK packing, compile
                pl.rss = probe.as_dict()
            except EngineFailed as e:
                pl.failure = str(e)
            except Exception as e:  # a backend that crashes on load/first call keeps its row with the reason
                pl.failure = f"{type(e).__name__}: {e}"
                log.debug("engine %s failed", pl.backend, exc_info=True)
            if pl.failure is None and pl.size == ctx.size:
                _quality_outputs(pl, ctx, labelled, quality_chunk)
    for i, ctx in enumerate(ctxs):
        _quality(plans, i, ctx, labelled)

    # Timing rows, interleaved across every engine and batch size.
    rows_by_key: dict[str, tuple[Plan, int, TimedRow]] = {}
    timed: list[TimedRow] = []
    for pl in plans:
        ctx = ctxs[pl.bundle_idx]
        for b in batches:
            key = (f"{ctx.tag}@{pl.size}/" if multi else "") + f"{pl.backend}/{pl.precision}/b{b}"
            row = TimedRow(key=key, fn=lambda: None, n_images=b, error=pl.failure)
            if pl.failure is None:
                x = _timing_input(ctx, pl.size, b, pl.engine.layout, rng)
                row.fn = (lambda e, xx: (lambda: e.run(xx)))(pl.engine, x)
                timed.append(row)
            rows_by_key[key] = (pl, b, row)
    n_done = _time(timed, args.warmup, iters, seconds, console)
    machine["load_average_end"] = load_average()
    _remeasure_peak(machine, threads)

    rows = [_row(key, pl, b, row, ctxs[pl.bundle_idx], machine) for key, (pl, b, row) in rows_by_key.items()]
    _add_speedups(rows, args.baseline)
    samples = {key: [round(t * 1000.0, 4) for t in row.times] for key, (_, _, row) in rows_by_key.items()}
    for pl in plans:
        if pl.engine is not None:
            try:
                pl.engine.close()
            except Exception:  # closing is best effort
                pass

    summary = summarize_models(rows)
    notes = [n for c in ctxs for n in c.notes]
    config = {"bundles": [str(c.path) for c in ctxs], "backends": args.backends, "precisions": args.precisions,
              "batches": batches, "threads": threads, "warmup": args.warmup, "iters": iters, "seconds": seconds,
              "timed_iterations": n_done, "data": str(args.data) if args.data else None,
              "checkpoints": [str(c) for c in (args.checkpoint or [])], "baseline": args.baseline,
              "interleaved": True}
    bundles = [{"tag": c.tag, "path": str(c.path), "model": c.bundle.manifest.model.model_dump(),
                "extractor_id": c.bundle.extractor_id, "input_size": list(c.bundle.manifest.preprocess.input_size),
                "flops": c.flops, "target": c.bundle.manifest.target,
                "checkpoint": str(c.checkpoint) if c.checkpoint else None} for c in ctxs]
    report = rpt.make_report("models", machine, config, rows, summary=summary, bundles=bundles, notes=notes,
                             samples_ms=samples)
    _print(rows, summary, notes, machine, n_done)
    common.write_outputs(report, args, CSV_COLUMNS, _plots)
    return 0


def _remeasure_peak(machine: dict, threads: int) -> None:
    """Measure peak FLOP/s again after timing and keep the higher: a peak is what the cores do when left alone,
    and on a shared machine either measurement may have met a burst of load."""
    peak = machine.get("peak")
    if not peak or "best_s" not in peak:
        return
    again = measure_peak_flops(threads, n=peak["matmul_n"])
    peak["measurements_gflops"] = [peak["peak_gflops"], again["peak_gflops"]]
    peak["peak_gflops"] = max(peak["measurements_gflops"])
    peak["method"] = "numpy float32 matmul, best of repeats, measured before and after timing (max)"


def _build(pl: Plan, ctx: BundleCtx, args, threads: int, batches: list[int]) -> Engine:
    if pl.backend in TORCH_BACKENDS:
        c, h, w = _sample_shape(ctx, pl.size)
        shapes = tuple((b, c, h, w) for b in dict.fromkeys(batches))
        return torch_engine(ctx.torch_model, ctx.checkpoint, threads, compile_=pl.backend == "torch-compile",
                            warm_shapes=shapes, compile_limit_s=args.compile_limit)
    if pl.backend in PEER_BACKENDS:
        return fer_tflite_engine(args.fer_tflite, threads, download=True)
    return runtime_engine(ctx.bundle, pl.backend, pl.artifact, threads)


def _quality_outputs(pl: Plan, ctx: BundleCtx, labelled, chunk: int) -> None:
    """Run the engine over --data images (else the reference inputs); an error here is reported, not fatal."""
    x = ctx.data_x if labelled is not None else ctx.ref_x
    if x is None:
        return
    try:
        pl.outputs = _run_padded(pl.engine, x, chunk)
    except Exception as e:
        pl.quality = {"quality_error": f"{type(e).__name__}: {e}"}


def _quality_reference(plans: list[Plan]) -> Optional[Plan]:
    """The row the others are compared with on --data: PyTorch eager, else the fp32 ONNX, else any fp32 row."""
    cands = [p for p in plans if p.outputs is not None and p.engine is not None and p.engine.output == "embedding"]
    for test in (lambda p: p.backend == "torch",
                 lambda p: p.backend == "onnxruntime" and p.precision.split(":")[0] == "fp32",
                 lambda p: p.precision.split(":")[0] == "fp32"):
        hit = next((p for p in cands if test(p)), None)
        if hit is not None:
            return hit
    return None


def _quality(plans: list[Plan], idx: int, ctx: BundleCtx, labelled) -> None:
    """Accuracy on --data (+ agreement with the reference row there), else parity with reference.npz."""
    mine = [p for p in plans if p.bundle_idx == idx and p.outputs is not None]
    head = ctx.bundle.head
    if labelled is None:
        for p in mine:
            p.quality = parity(p.outputs, ctx.ref_e, head, p.engine.output, ctx.logits_dims)
            p.quality["reference"] = "PyTorch (reference.npz)"
        return
    ref = _quality_reference(mine)
    for p in mine:
        q = accuracy(p.outputs, labelled.labels, head, p.engine.output)
        if ref is not None:
            agree = parity(p.outputs, ref.outputs, head, p.engine.output, ctx.logits_dims)
            agree.pop("mode")
            agree.pop("n_images")
            q.update(agree)
            q["reference"] = f"{ref.backend}/{ref.precision}"
        p.quality = q


def _time(timed: list[TimedRow], warmup: int, iters, seconds, console) -> int:
    # optional: rich comes with the train extra only
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not timed:
        return 0
    total = iters if iters is not None else seconds
    with Progress(TextColumn("timing {task.description}"), BarColumn(), TextColumn("{task.fields[it]} iterations"),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task(f"{len(timed)} rows, interleaved", total=total, it=0)

        def tick(done: int, elapsed: float) -> None:
            prog.update(task, completed=done if iters is not None else min(elapsed, seconds), it=done)

        return run_interleaved(timed, warmup=warmup, iters=iters, seconds=seconds, on_iteration=tick)


def _row(key: str, pl: Plan, batch: int, row: TimedRow, ctx: BundleCtx, machine: dict) -> dict:
    e = pl.engine
    r = {"key": key, "bundle": ctx.tag, "model": ctx.bundle.manifest.model.backbone, "img_size": pl.size,
         "backend": pl.backend, "precision": pl.precision, "batch": batch,
         "status": "ok" if row.ok and pl.failure is None else "failed",
         "reason": pl.failure or row.error, "file": e.file if e else (pl.artifact.file if pl.artifact else None),
         "size_mb": (e.size_bytes / 2 ** 20) if e and e.size_bytes else None,
         "info": e.info if e else None}
    r.update(pl.rss)
    if r["status"] == "ok":
        r.update(summarize(row.times, batch))
    flops = ctx.flops["flops"] * (pl.size / ctx.size) ** 2 if ctx.flops else None
    r["flops_per_image"] = flops
    peak = (machine.get("peak") or {}).get("peak_gflops")
    if flops and peak and r.get("images_per_s"):
        r["peak_fraction"] = flops * r["images_per_s"] / (peak * 1e9)
    q = dict(pl.quality)
    r["quality_mode"] = q.pop("mode", None)
    r["quality_n"] = q.pop("n_images", None)
    r["quality_reference"] = q.pop("reference", None)
    r.update(q)
    r["quality"] = _quality_text(r)
    if e is not None and e.extra:
        r["engine"] = e.extra
    return r


def _quality_text(r: dict) -> Optional[str]:
    """Compact quality cell: acc (on --data), agr (top-1 agreement), cos (mean cosine); details in JSON/CSV."""
    parts = []
    if r.get("top1_accuracy") is not None:
        parts.append(f"acc {100 * r['top1_accuracy']:.1f}")
    if r.get("top1_agreement") is not None:
        parts.append(f"agr {100 * r['top1_agreement']:.1f}")
    if r.get("logit_agreement") is not None:
        parts.append(f"lgt {100 * r['logit_agreement']:.1f}")
    if r.get("cosine_mean") is not None:
        parts.append(f"cos {r['cosine_mean']:.3f}")
    if not parts and r.get("quality_error"):
        return "error"
    return " ".join(parts) or None


def _add_speedups(rows: list[dict], baseline: str) -> None:
    """speedup_vs_baseline = baseline's p50 per image / row's, per (bundle, size, batch)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["bundle"], r["img_size"], r["batch"]), []).append(r)
    for grp in groups.values():
        ok = [r for r in grp if r["status"] == "ok"]
        prec = lambda r: r["precision"].split(":")[0]  # noqa: E731 - "fp32:extractor_nhwc" -> fp32
        base = next((r for r in ok if r["backend"] == baseline and prec(r) == "fp32"), None)
        if base is None:
            base = next((r for r in ok if r["backend"] == baseline), None)
        if base is None:
            base = next((r for r in ok if r["backend"] == "onnxruntime" and prec(r) == "fp32"), None)
        for r in grp:
            if base is not None and r["status"] == "ok":
                r["baseline"] = base["backend"] + "/" + base["precision"]
                r["speedup_vs_baseline"] = base["p50_ms_per_image"] / r["p50_ms_per_image"]


def summarize_models(rows: list[dict]) -> dict:
    """The headline ratios of docs/benchmarks.md, per bundle (None where a row is missing)."""
    out: dict = {}
    ok = [r for r in rows if r["status"] == "ok"]
    for tag in dict.fromkeys(r["bundle"] for r in rows):
        mine = [r for r in ok if r["bundle"] == tag and r["img_size"] == max(x["img_size"] for x in rows
                                                                            if x["bundle"] == tag)]
        b1 = [r for r in mine if r["batch"] == min(x["batch"] for x in rows)]
        eager = next((r for r in b1 if r["backend"] == "torch"), None)
        compiled = [r for r in b1 if r["backend"] in ("onnxruntime", "tflite", "tensorrt")]
        fastest = min(compiled, key=lambda r: r["p50_ms_per_image"], default=None)
        pre = f"{tag}." if len({r['bundle'] for r in rows}) > 1 else ""
        if fastest is not None:
            out[pre + "fastest_compiled"] = fastest["key"]
            out[pre + "fastest_compiled_p50_ms"] = fastest["p50_ms"]
        if fastest is not None and eager is not None:
            out[pre + "speedup_fastest_vs_torch_eager_b1"] = eager["p50_ms_per_image"] / fastest["p50_ms_per_image"]
        tf = {r["precision"]: r for r in b1 if r["backend"] == "tflite"}
        if "int8" in tf and "fp32" in tf:
            out[pre + "tflite_int8_vs_fp32_speedup_b1"] = tf["fp32"]["p50_ms_per_image"] / tf["int8"]["p50_ms_per_image"]
            for k in ("top1_agreement", "top1_accuracy"):
                if tf["int8"].get(k) is not None:
                    out[pre + f"tflite_int8_{k}"] = tf["int8"][k]
        fer = next((r for r in b1 if r["backend"] == "fer-tflite"), None)
        if fer is not None and fastest is not None:
            out[pre + "fastest_compiled_vs_fer_tflite_b1"] = fer["p50_ms_per_image"] / fastest["p50_ms_per_image"]
        best_peak = max((r.get("peak_fraction") or 0 for r in mine), default=0)
        if best_peak:
            out[pre + "best_peak_fraction"] = best_peak
    return out


def _print(rows, summary, notes, machine, n_done) -> None:
    console = rpt.make_console()
    peak = machine.get("peak") or {}
    cap = (f"{machine['cpu_model']}, {machine['logical_cores']} cores, threads={machine['threads']}, "
           f"{n_done} interleaved iterations" +
           (f", peak {peak['peak_gflops']:.0f} GFLOP/s (numpy sgemm)" if peak else "") +
           f", load {machine.get('load_average_start')} → {machine.get('load_average_end')}")
    rpt.print_table("infantino-bench models", TABLE_COLUMNS, display_rows(rows), console=console, caption=cap)
    for k, v in summary.items():
        console.print(f"  {k}: {rpt.fmt(v, '.3f') if isinstance(v, float) else v}", highlight=False)
    for n in notes:
        console.print(f"  note: {n}", style="yellow", highlight=False)


def display_rows(rows: list[dict]) -> list[dict]:
    """Rows for the terminal: a failed engine is shown once (its batches joined), not once per batch."""
    out, seen = [], {}
    for r in rows:
        if r["status"] == "ok":
            out.append(r)
            continue
        engine_key = r["key"].rsplit("/b", 1)[0]
        if engine_key in seen:
            seen[engine_key]["key"] += f",{r['batch']}"
            continue
        d = dict(r)
        seen[engine_key] = d
        out.append(d)
    return out


def _plots(report: dict, out: Path) -> list[Path]:
    rows = report["rows"]
    per_image = {r["key"]: [t / r["batch"] for t in report["samples_ms"].get(r["key"], [])]
                 for r in rows if r["status"] == "ok"}
    files = [rpt.plot_latency_distribution(per_image, out / "models_latency.png",
                                           "extractor latency per image (interleaved run)")]
    files.append(rpt.plot_quality_vs_latency(rows, out / "models_quality_vs_latency.png",
                                             ("top1_accuracy", "top1_agreement", "logit_agreement"),
                                             "quality vs latency (smallest batch)"))
    return files

"""Time the whole frame path on a video: decode, detect, preprocess, embed, head; frames/s and each stage's share.

Each frame is decoded once and then run through every pipeline (one per --backends entry) in rotating order,
so a burst of load from elsewhere hits every pipeline alike. The runtime's Pipeline reports its own stage
timings per frame; "other" is what predict_frame() costs beyond them (cropping, result objects). The
extractor overhead is (end-to-end - embed) / embed over frames where a face was found: what the rest of the
frame path costs relative to the extractor; it is also given without decode and detection (which depend on
the camera resolution and the detector), i.e. what cropping, preprocessing, the head and the glue cost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.backends.registry import list_backends
from infantino.runtime.bundle import load_bundle
from infantino.runtime.face import FaceOptions, create_detector
from infantino.runtime.pipeline import Pipeline
from infantino.runtime.sources import open_source

from .. import common
from .. import report as rpt
from ..machine import describe, load_average
from ..timing import rotation

log = logging.getLogger(__name__)

HELP = "per-stage timing of the frame path (decode, detect, preprocess, embed, head) on a video"
STAGES = ("decode", "detect", "preprocess", "embed", "head", "other")

CSV_COLUMNS = ("key", "backend", "precision", "status", "reason", "frames", "frames_with_face", "fps",
               "e2e_mean_ms", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms",
               *[f"{s}_ms" for s in STAGES], *[f"{s}_share" for s in STAGES],
               "face_e2e_mean_ms", "face_embed_mean_ms", "extractor_overhead", "overhead_ex_detect", "info")
TABLE_COLUMNS = (("key", "pipeline", ""), ("status", "status", ""), ("fps", "frames/s", ".1f"),
                 ("e2e_p50_ms", "p50 ms", ".2f"), ("e2e_p95_ms", "p95", ".2f"),
                 *[(f"{s}_share", s, "pct") for s in STAGES],
                 ("extractor_overhead", "rest/extractor", "pct"), ("overhead_ex_detect", "w/o decode+detect", "pct"),
                 ("frames_with_face", "faces", ""))


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, type=Path, metavar="B", help="bundle directory or .tar")
    p.add_argument("--public-key", default=None, metavar="PEM",
                   help="public key that signed the bundle (default $INFANTINO_PUBLIC_KEY)")
    p.add_argument("--video", required=True, metavar="SRC",
                   help="video file (or folder of images, camera index, URL) to read frames from")
    p.add_argument("--backends", default="auto",
                   help="comma list of pipelines to compare: auto, onnxruntime, tflite:int8, ... (default auto)")
    p.add_argument("--frames", type=common.positive_int, default=300,
                   help="timed frames at most (default 300; the video loops if it is shorter)")
    p.add_argument("--warmup", type=common.non_negative_int, default=5,
                   help="frames run through every pipeline before timing (default 5)")
    p.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads per backend (default: the cores this process may use)")
    p.add_argument("--detector", default=None,
                   help="face detector: blazeface (the runtime's default), haar or full_frame")
    p.add_argument("--detector-model", choices=("full", "short"), default=None,
                   help="BlazeFace search model (default: FaceOptions' default, full)")
    p.add_argument("--detect-max-side", type=common.positive_int, default=None, metavar="PX",
                   help="downscale frames whose longer side exceeds PX before detection")
    p.add_argument("--all-faces", action="store_true", help="classify every face (default: the largest only)")
    common.add_output_arguments(p)


@dataclass
class PipeRow:
    key: str
    backend: str
    precision: Optional[str]
    pipe: object = None
    failure: Optional[str] = None
    stage_ms: dict = field(default_factory=lambda: {s: [] for s in STAGES})
    e2e_ms: list = field(default_factory=list)
    face_frames: list = field(default_factory=list)  # (e2e, embed, detect+decode) for frames with a face
    info: Optional[str] = None


def parse_backends(text: str) -> list[tuple[str, Optional[str]]]:
    """"auto,tflite:int8" -> [("auto", None), ("tflite", "int8")], names checked against the registry."""
    out = common.parse_backend_specs(text, ["auto"] + list_backends())
    if not out:
        raise ValueError("--backends: empty list")
    return out


def run(args) -> int:
    specs = parse_backends(args.backends)
    common.check_output_paths(args)
    if not args.bundle.exists():
        raise FileNotFoundError(f"--bundle: no such bundle directory or .tar: {args.bundle}")
    threads = common.default_threads(args)

    chosen = {k: v for k, v in (("detector", args.detector), ("model", args.detector_model)) if v is not None}
    face = FaceOptions(detect_max_side=args.detect_max_side, largest_only=not args.all_faces, **chosen)
    args.detector = face.detector
    create_detector(face)  # unknown detector names fail here, before anything is measured
    source = open_source(args.video, loop=True)  # a short clip loops: enough frames for the budget
    machine = describe(threads=threads, peak=not args.no_peak)
    bundle = load_bundle(args.bundle, public_key=args.public_key)

    rows: list[PipeRow] = []
    for name, prec in specs:
        key = name + (f":{prec}" if prec else "")
        row = PipeRow(key=key, backend=name, precision=prec)
        try:
            row.pipe = Pipeline(bundle, backend=name, face=face, threads=threads, precision=prec)
            row.backend = row.pipe.backend.name
            row.precision = row.pipe.backend.artifact.precision
            row.info = f"{row.pipe.backend.describe()}; detector={row.pipe.detector.name}"
            if name == "auto":
                row.key = f"auto→{row.backend}:{row.precision}"
        except Exception as e:  # backend missing / artifact absent: keep the row with the reason
            row.failure = f"{type(e).__name__}: {e}"
        rows.append(row)

    live = [r for r in rows if r.failure is None]
    decode_ms: list[float] = []
    n_total = args.warmup + args.frames
    console = rpt.make_console(stderr=True)
    from rich.progress import Progress  # optional: rich comes with the train extra only

    frames_iter = iter(source)
    try:
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("pipeline frames", total=n_total)
            for i in range(n_total):
                t0 = time.perf_counter()
                try:
                    frame = next(frames_iter)
                except StopIteration:
                    break
                dec = (time.perf_counter() - t0) * 1e3
                timed = i >= args.warmup
                if timed:
                    decode_ms.append(dec)
                for j in rotation(len(live), i):
                    r = live[j]
                    if r.failure:
                        continue
                    try:
                        t1 = time.perf_counter()
                        res = r.pipe.predict_frame(frame)
                        total = (time.perf_counter() - t1) * 1e3
                    except Exception as e:
                        r.failure = f"{type(e).__name__}: {e}"
                        continue
                    if timed:
                        _record(r, res, dec, total)
                prog.advance(task)
    finally:
        source.close()
        for r in rows:
            if r.pipe is not None:
                r.pipe.close()
    if not decode_ms:
        raise ValueError(f"--video {args.video}: no frames could be read")
    machine["load_average_end"] = load_average()

    out_rows = [_summarize(r) for r in rows]
    config = {"bundle": str(args.bundle), "video": str(args.video), "backends": args.backends,
              "frames": len(decode_ms), "warmup": args.warmup, "threads": threads, "detector": args.detector,
              "detect_max_side": args.detect_max_side, "interleaved": True}
    frame_shape = list(frame.shape) if decode_ms else None
    summary = {}
    for r in out_rows:
        if r["status"] == "ok" and r.get("extractor_overhead") is not None:
            summary[f"{r['key']}.extractor_overhead"] = r["extractor_overhead"]
            summary[f"{r['key']}.overhead_ex_detect"] = r["overhead_ex_detect"]
            summary[f"{r['key']}.fps"] = r["fps"]
    report = rpt.make_report("pipeline", machine, config, out_rows, summary=summary, frame_shape=frame_shape,
                             samples_ms={r.key: [round(x, 4) for x in r.e2e_ms] for r in rows})
    cap = (f"{machine['cpu_model']}, threads={threads}, {len(decode_ms)} frames {frame_shape}, "
           f"decode once per frame (shared), load {machine.get('load_average_start')} → {machine['load_average_end']}")
    rpt.print_table("infantino-bench pipeline (share of end-to-end time per frame)", TABLE_COLUMNS, out_rows,
                    console=rpt.make_console(), caption=cap)
    common.write_outputs(report, args, CSV_COLUMNS, _plots)
    return 0


def _record(r: PipeRow, res, decode: float, total: float) -> None:
    t = res.timings
    r.stage_ms["decode"].append(decode)
    for s in ("detect", "preprocess", "embed", "head"):
        r.stage_ms[s].append(float(t.get(s, 0.0)))
    known = sum(float(t.get(s, 0.0)) for s in ("detect", "preprocess", "embed", "head"))
    r.stage_ms["other"].append(max(total - known, 0.0))
    e2e = decode + total
    r.e2e_ms.append(e2e)
    if res.faces:
        r.face_frames.append((e2e, float(t.get("embed", 0.0)), decode + float(t.get("detect", 0.0))))


def _summarize(r: PipeRow) -> dict:
    d = {"key": r.key, "backend": r.backend, "precision": r.precision,
         "status": "ok" if r.failure is None and r.e2e_ms else "failed",
         "reason": r.failure or (None if r.e2e_ms else "no frames timed"),
         "info": r.info}
    if d["status"] != "ok":
        return d
    e2e = np.asarray(r.e2e_ms)
    n = len(e2e)
    d.update({"frames": n, "frames_with_face": len(r.face_frames), "e2e_mean_ms": float(e2e.mean()),
              "e2e_p50_ms": float(np.percentile(e2e, 50)), "e2e_p95_ms": float(np.percentile(e2e, 95)),
              "e2e_p99_ms": float(np.percentile(e2e, 99)), "fps": float(1000.0 / e2e.mean())})
    for s in STAGES:
        m = float(np.mean(r.stage_ms[s])) if r.stage_ms[s] else 0.0
        d[f"{s}_ms"] = m
        d[f"{s}_share"] = m / d["e2e_mean_ms"] if d["e2e_mean_ms"] > 0 else None
    if r.face_frames:
        fe = np.asarray(r.face_frames)
        d["face_e2e_mean_ms"] = float(fe[:, 0].mean())
        d["face_embed_mean_ms"] = float(fe[:, 1].mean())
        if d["face_embed_mean_ms"] > 0:
            rest = d["face_e2e_mean_ms"] - d["face_embed_mean_ms"]
            d["extractor_overhead"] = rest / d["face_embed_mean_ms"]
            # the same without decode and detection (camera- and detector-specific): crop, preprocess, head, glue
            d["overhead_ex_detect"] = (rest - float(fe[:, 2].mean())) / d["face_embed_mean_ms"]
    return d


def _plots(report: dict, out: Path) -> list[Path]:
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    stages = {r["key"]: {s: r.get(f"{s}_ms") for s in STAGES} for r in ok}
    return [rpt.plot_stacked_stages(stages, out / "pipeline_stages.png", "frame path: ms per frame by stage"),
            rpt.plot_latency_distribution({k: v for k, v in report["samples_ms"].items() if v},
                                          out / "pipeline_latency.png", "end-to-end latency per frame",
                                          xlabel="ms per frame")]

"""Whole 640x480 frames, ours against the `fer` package: frames/s, stages, p50/p95, recall and teacher agreement.

Our rows: the bundle's pipeline per backend:precision (--backends; `torch` runs --checkpoint in PyTorch eager)
and face detector (--detectors). Peer rows: `pip install fer`'s FER(mtcnn=False).detect_emotions (Haar + fer's
TFLite) and FER(mtcnn=True) (facenet-pytorch's MTCNN), each in its own process under the peer venv's python
(--peer-python, default ./.venv-peers/bin/python: `make bench-peers` makes it). The frames (benchmarks.frameset:
held-out real faces composited into scenes, and a camera clip) are written once as .npz; every row runs them
all in --rounds interleaved rounds. Recall is IoU >= --iou with the composited face; agreement is the teacher's
label of that face kept (a missed face disagrees). See docs/benchmarks.md ("Whole frames vs fer").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.backends.registry import create_backend, list_backends
from infantino.runtime.bundle import load_bundle
from infantino.runtime.face import list_detectors

from .. import common
from .. import report as rpt
from ..framerun import ORDERS, close_rows, our_row, peer_row, run_rounds, warm_up
from ..framescore import IOU, score
from ..frameset import GROUPS, build_frameset
from ..machine import describe, load_average
from ..peerproc import HOW_TO, peer_python

log = logging.getLogger(__name__)

HELP = "whole 640x480 frames: our pipelines vs the fer package (Haar, MTCNN) — frames/s, recall, agreement"
DEFAULT_BACKENDS = "onnxruntime:fp32,tflite:fp32,tflite:fp16,tflite:int8"
PEERS = ("haar", "mtcnn")
GOALS = {"haar": 10.0, "mtcnn": 30.0}  # issue 15: our frames/s over fer's, at equal or better recall and agreement
STAGES = ("detect", "classify", "other")
CSV_COLUMNS = ("set", "key", "kind", "backend", "precision", "detector", "status", "reason", "frames", "fps",
               "fps_round_min", "fps_round_max", "e2e_mean_ms", "e2e_p50_ms", "e2e_p95_ms", "detect_ms",
               "classify_ms", "other_ms", "preprocess_ms", "embed_ms", "head_ms", "recall", "recall_upright",
               "agreement", "agreement_of_found", "false_face_rate", "extra_boxes_per_face_frame", "vs_fer_haar",
               "vs_fer_mtcnn", "face_frames", "empty_frames", "changed_frames", "info")
TABLE_COLUMNS = (("set", "set", ""), ("key", "row", ""), ("status", "status", ""), ("fps", "frames/s", ".1f"),
                 ("e2e_p50_ms", "p50 ms", ".2f"), ("e2e_p95_ms", "p95", ".2f"), ("detect_ms", "detect", ".2f"),
                 ("classify_ms", "classify", ".2f"), ("other_ms", "other", ".2f"), ("recall", "recall", ".3f"),
                 ("recall_upright", "upright", ".3f"), ("agreement", "agreement", ".3f"),
                 ("agreement_of_found", "of found", ".3f"), ("false_face_rate", "false faces", "pct"),
                 ("vs_fer_haar", "× fer haar", ".1f"), ("vs_fer_mtcnn", "× fer mtcnn", ".1f"))


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, type=Path, metavar="B", help="bundle directory or .tar")
    p.add_argument("--public-key", default=None, metavar="PEM",
                   help="public key that signed the bundle (default $INFANTINO_PUBLIC_KEY)")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"comma list of backend[:precision] (default {DEFAULT_BACKENDS}); `torch` = --checkpoint "
                        "in PyTorch eager")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PT",
                   help="the bundle's extractor checkpoint: adds a `torch` row per detector")
    p.add_argument("--detectors", default="blazeface,haar", help="comma list of our face detectors (default "
                   "blazeface,haar; each with the runtime's defaults)")
    p.add_argument("--peers", default="haar,mtcnn",
                   help="fer rows: haar, mtcnn, or none (default haar,mtcnn)")
    p.add_argument("--peer-python", default=None, metavar="PY",
                   help="python of the peer venv (default $INFANTINO_PEER_PYTHON, else ./.venv-peers/bin/python)")
    p.add_argument("--rounds", type=common.positive_int, default=3,
                   help="interleaved rounds; each runs every frame through every row (default 3)")
    p.add_argument("--order", choices=ORDERS, default="row",
                   help="row (default): each of our rows runs the whole set in turn, as one camera's pipeline and "
                        "as each fer peer does; frame: every frame through all our rows in rotating order (each "
                        "model's weights are then evicted by the others' between its turns)")
    p.add_argument("--warmup", type=common.non_negative_int, default=3, help="untimed frames per set first (default 3)")
    p.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads of our backends (default: the cores this process may use; the face detector "
                        "keeps the runtime's 1); fer keeps its own defaults")
    f = p.add_argument_group("frames")
    f.add_argument("--photo-scenes", type=common.non_negative_int, default=12,
                   help="scenes per photo face, astronaut and grace_hopper (default 12: every rotation twice)")
    f.add_argument("--lfw-faces", type=common.non_negative_int, default=50,
                   help="held-out LFW faces, one upright scene each (<= 50, default 50)")
    f.add_argument("--face-free", type=common.non_negative_int, default=10, help="face-free scenes (default 10)")
    f.add_argument("--camera-frames", type=common.non_negative_int, default=90,
                   help="frames of the camera clip (default 90; 0 = none)")
    f.add_argument("--seed", type=int, default=2024, help="frame seed (default 2024)")
    f.add_argument("--iou", type=common.positive_float, default=IOU, help=f"IoU that counts as found (default {IOU})")
    f.add_argument("--keep-frames", type=Path, default=None, metavar="NPZ",
                   help="keep the frames .npz the rows read (default: a temporary file)")
    common.add_output_arguments(p)


def parse_specs(text: str, checkpoint: Optional[Path]) -> list[tuple[str, Optional[str]]]:
    """"onnxruntime:fp32,torch" -> [(name, precision)], names checked against the registry (+ torch)."""
    out = common.parse_backend_specs(text, list_backends() + ["torch"])
    if checkpoint is not None and not any(n == "torch" for n, _ in out):
        out.append(("torch", "fp32"))
    if any(n == "torch" for n, _ in out) and checkpoint is None:
        raise ValueError("--backends torch needs --checkpoint (the bundle's extractor.pt)")
    if not out:
        raise ValueError("--backends: empty list")
    return out


def check_args(args) -> tuple[list, list[str], list[str]]:
    specs = parse_specs(args.backends, args.checkpoint)
    detectors = common.name_list(args.detectors, [d for d in list_detectors() if d != "full_frame"], "detectors",
                                 allow_all=False)
    peers = [] if args.peers.strip() == "none" else common.name_list(args.peers, PEERS, "peers", allow_all=False)
    common.check_output_paths(args)
    if not args.bundle.exists():
        raise FileNotFoundError(f"--bundle: no such bundle directory or .tar: {args.bundle}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file: {args.checkpoint}")
    if args.lfw_faces > 50:
        raise ValueError(f"--lfw-faces: 50 LFW faces are held out, got {args.lfw_faces}")
    if not (args.photo_scenes or args.lfw_faces or args.face_free or args.camera_frames):
        raise ValueError("no frames: give --photo-scenes, --lfw-faces, --face-free or --camera-frames")
    return specs, detectors, peers


def _backend(bundle, name: str, prec: Optional[str], threads: int, checkpoint: Optional[Path]):
    if name == "torch":
        from ..torchbackend import TorchEagerBackend  # heavy: torch

        return TorchEagerBackend(bundle, checkpoint, threads=threads)
    return create_backend(name, bundle, threads=threads, precision=prec)


def build_rows(args, bundle, specs, detectors, peers, npz: Path, groups: list[str], threads: int) -> list:
    from ..framerun import FrameRow

    rows = []
    for name, prec in specs:
        try:
            be = _backend(bundle, name, prec, threads, args.checkpoint)
        except Exception as e:  # backend missing / artifact absent: keep the rows with the reason
            rows += [FrameRow(key=f"{name}:{prec or 'auto'} + {d}", kind="ours", backend=name, precision=prec,
                              detector=d, failure=f"{type(e).__name__}: {e}") for d in detectors]
            continue
        for d in detectors:
            key = f"{be.name}:{be.artifact.precision} + {d}"
            try:
                rows.append(our_row(bundle, be, key, d, groups))
            except Exception as e:  # detector models missing: keep the row with the reason
                rows.append(FrameRow(key=key, kind="ours", backend=be.name, precision=be.artifact.precision,
                                     detector=d, failure=f"{type(e).__name__}: {e}"))
    python = peer_python(args.peer_python)
    for d in peers:
        rows.append(peer_row(python, npz, d, args.warmup))
    return rows


def run(args) -> int:
    specs, detectors, peers = check_args(args)
    threads = common.default_threads(args)
    bundle = load_bundle(args.bundle, public_key=args.public_key)
    t0 = time.perf_counter()
    fs = build_frameset(args.photo_scenes, args.lfw_faces, args.face_free, args.camera_frames, args.seed)
    log.info("made %d frames in %.1f s", len(fs), time.perf_counter() - t0)
    groups = [g for g in GROUPS if len(fs.indices(g))]
    machine = describe(threads=threads, peak=not args.no_peak)
    loads: list[dict] = []
    npz, tmp = common.kept_or_temp(args.keep_frames, "frames.npz", "infantino-frames-")
    fs.save(npz)
    rows = []
    try:
        rows = build_rows(args, bundle, specs, detectors, peers, npz, groups, threads)
        warm_up(rows, fs, args.warmup)
        n_peers = sum(r.kind == "peer" for r in rows)
        from rich.progress import Progress  # optional: rich comes with the train extra only

        with Progress(console=rpt.make_console(stderr=True), transient=True) as prog:
            task = prog.add_task("frames rounds", total=args.rounds * len(fs) * (1 + n_peers))
            run_rounds(rows, fs, args.rounds, lambda k: prog.advance(task, k),
                       lambda k, side: loads.append({"round": k, "side": side, "load_average": load_average()}),
                       order=args.order)
    finally:
        close_rows(rows)
        if tmp is not None:
            tmp.cleanup()
    machine["load_average_end"] = load_average()
    out = summarize(rows, fs, groups, args.iou)
    goals = goal_check(out, groups)
    config = {"bundle": str(args.bundle), "backends": args.backends, "checkpoint": str(args.checkpoint or ""),
              "detectors": detectors, "peers": peers, "rounds": args.rounds, "warmup": args.warmup,
              "threads": threads, "photo_scenes": args.photo_scenes, "lfw_faces": args.lfw_faces,
              "face_free": args.face_free, "camera_frames": args.camera_frames, "seed": args.seed, "iou": args.iou,
              "frames": {g: int(len(fs.indices(g))) for g in groups}, "frame_shape": list(fs.frames.shape[1:]),
              "interleaved": "rounds alternate ours/peers; " + (
                  "our rows rotate per frame" if args.order == "frame" else "each of our rows runs the set in turn, "
                  "their order rotating per round"), "order": args.order, "batch": 1,
              "peer_python": str(peer_python(args.peer_python))}
    report = rpt.make_report("frames", machine, config, out, goals=goals, loads=loads,
                             peers={r.key: (r.peer.ready if r.peer else {"failed": r.failure})
                                    for r in rows if r.kind == "peer"},
                             samples_ms={f"{g}/{r.key}": [round(float(x), 3) for t in r.total_ms
                                                         for x in t[fs.indices(g)]] for r in rows for g in groups})
    cap = (f"{machine['cpu_model']}, threads={threads}, {len(fs)} frames {list(fs.frames.shape[1:])}, "
           f"{args.rounds} rounds, load {machine.get('load_average_start')} → {machine['load_average_end']}")
    rpt.print_table("infantino-bench frames (whole frames, batch 1)", TABLE_COLUMNS, out,
                    console=rpt.make_console(), caption=cap)
    for line in goal_lines(goals):
        print(line)
    if any(r.kind == "peer" and not r.ok and "bench-peers" in (r.failure or "") for r in rows):
        print(f"peer rows: {HOW_TO}")
    common.write_outputs(report, args, CSV_COLUMNS, _plots)
    return 0


def summarize(rows: list, fs, groups: list[str], iou: float) -> list[dict]:
    """One output row per frame set and row: timing over every round, scores from the first round."""
    out = []
    for g in groups:
        idx = fs.indices(g)
        block = []
        for r in rows:
            d = {"set": g, "key": r.key, "kind": r.kind, "backend": r.backend, "precision": r.precision,
                 "detector": r.detector, "status": "ok" if r.ok and r.total_ms else "failed",
                 "reason": r.failure or (None if r.total_ms else "no round timed"), "info": r.info}
            if d["status"] == "ok":
                d.update(_timing(r, idx))
                d.update(score([r.outputs[i] for i in idx], fs.boxes[idx], fs.teacher[idx], fs.rotation[idx], iou))
                d["changed_frames"] = r.changed
            block.append(d)
        for peer in PEERS:
            ref = next((b for b in block if b["kind"] == "peer" and b["detector"] == peer and b["status"] == "ok"), None)
            for b in block:
                if b["status"] == "ok" and ref is not None:
                    b[f"vs_fer_{peer}"] = b["fps"] / ref["fps"]
        out += block
    return out


def _timing(r, idx: np.ndarray) -> dict:
    tot = np.stack([t[idx] for t in r.total_ms])  # (rounds, frames)
    d = {"frames": int(tot.size), "e2e_mean_ms": float(tot.mean()), "fps": 1000.0 / float(tot.mean()),
         "e2e_p50_ms": float(np.percentile(tot, 50)), "e2e_p95_ms": float(np.percentile(tot, 95)),
         "fps_round_min": 1000.0 / float(tot.mean(1).max()), "fps_round_max": 1000.0 / float(tot.mean(1).min())}
    for s in r.stage_ms[0]:
        d[f"{s}_ms"] = float(np.mean([st[s][idx] for st in r.stage_ms]))
    d["other_ms"] = max(d["e2e_mean_ms"] - d["detect_ms"] - d["classify_ms"], 0.0)
    return d


def goal_check(rows: list[dict], groups: list[str]) -> list[dict]:
    """Per set and peer: the fastest of our rows with recall and agreement >= the peer's, against the goal."""
    out = []
    for g in groups:
        ok = [r for r in rows if r["set"] == g and r["status"] == "ok"]
        for peer, target in GOALS.items():
            ref = next((r for r in ok if r["kind"] == "peer" and r["detector"] == peer), None)
            ours = [r for r in ok if r["kind"] == "ours"]
            item = {"set": g, "peer": f"fer {peer}", "target": target, "status": "no peer row", "met": None}
            if ref is None or not ours:
                out.append(item)
                continue
            good = [r for r in ours if _at_least(r, ref, "recall") and _at_least(r, ref, "agreement")]
            fastest = max(ours, key=lambda r: r["fps"])
            item.update({"peer_fps": ref["fps"], "peer_recall": ref["recall"], "peer_agreement": ref["agreement"],
                         "fastest": fastest["key"], "fastest_ratio": fastest["fps"] / ref["fps"]})
            if good:
                best = max(good, key=lambda r: r["fps"])
                item.update({"best": best["key"], "ratio": best["fps"] / ref["fps"], "recall": best["recall"],
                             "agreement": best["agreement"]})
                item["met"] = item["ratio"] >= target
                item["status"] = "met" if item["met"] else "missed (speed)"
            else:
                item["met"] = False
                item["status"] = "missed (no row of ours has equal or better recall and agreement)"
            out.append(item)
    return out


def _at_least(r: dict, ref: dict, k: str) -> bool:
    if ref.get(k) is None:
        return True
    return r.get(k) is not None and r[k] >= ref[k] - 1e-9


def goal_lines(goals: list[dict]) -> list[str]:
    lines = []
    for gl in goals:
        head = f"goal {gl['set']}: ≥ {gl['target']:.0f}× {gl['peer']}'s frames/s at equal or better recall and agreement"
        if gl.get("ratio") is not None:
            lines.append(f"{head}: {gl['status'].upper()} — {gl['best']} {gl['ratio']:.1f}× (recall {gl['recall']:.3f}"
                         f" vs {gl['peer_recall']:.3f}, agreement {gl['agreement']:.3f} vs {gl['peer_agreement']:.3f})")
        elif gl.get("fastest") is not None:
            lines.append(f"{head}: {gl['status'].upper()}; fastest {gl['fastest']} {gl['fastest_ratio']:.1f}×")
        else:
            lines.append(f"{head}: {gl['status']}")
    return lines


def _plots(report: dict, out: Path) -> list[Path]:
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    stages = {f"{r['set']}/{r['key']}": {s: r.get(f"{s}_ms") for s in STAGES} for r in ok}
    return [rpt.plot_stacked_stages(stages, out / "frames_stages.png", "whole frames: ms per frame by stage"),
            rpt.plot_latency_distribution({k: v for k, v in report["samples_ms"].items() if v},
                                          out / "frames_latency.png", "wall time per frame",
                                          xlabel="ms per frame")]

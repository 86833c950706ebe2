"""Face detectors side by side on real faces composited into camera frames: recall per rotation, scale and source,
false faces on face-free frames, detection latency.

Scenes come from benchmarks.scenes (seeded): scikit-image's astronaut and matplotlib's grace_hopper (whole heads,
"photo") and lfw_subset faces (tight 25x25 crops, blurry when upscaled, reported apart), turned 0, +-30, 90, 180,
270 degrees, 48-240 px, lit 0.6-1.3x, on varied backgrounds; plus face-free frames (blank, noise, gradients,
textures, LFW non-face patches, natural photos). A face counts as found when a box has IoU >= --iou with the
ground-truth square or its centre lies inside it. Every frame runs through every detector in rotating order
(interleaved timing). In "camera" order the scenes come in runs of one orientation, face-free frames last, as a
crib camera sees them (a detector may remember the orientation); "shuffled" mixes them. These scenes are
unrelated images, so every detector runs with FaceOptions(track=False) unless its entry says +track.

The camera run (--camera-frames, default 150) is a video instead: benchmarks.scenes.camera_scenes, the photo
faces drifting 1-3 px and turning up to 1 degree per frame over one static background, leaving and coming
back elsewhere in another orientation, written as an MJPG .avi and decoded frame by frame as from a camera.
Its detectors (--camera-detectors) compare the per-frame search (track off) with following faces (+track):
recall, false faces, detection p50 against Haar's, model passes per frame, frames until a new face is found,
and with --bundle the share of the whole frame path (decode + Pipeline.predict_frame) that detection takes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.atomic import atomic_write_bytes
from infantino.runtime.face import Box, FaceOptions, create_detector, list_detectors
from infantino.runtime.pipeline import Pipeline

from .. import common, scenes as sc
from .. import report as rpt
from ..machine import describe, load_average
from ..scenes import ROTATIONS, SCALES
from ..timing import rotation as rotation_order

log = logging.getLogger(__name__)

HELP = "face detectors on composited real faces: recall per rotation/scale, false faces, latency; camera clip"
DEFAULT_DETECTORS = "blazeface:full,blazeface:short,haar"
DEFAULT_CAMERA_DETECTORS = "haar,blazeface:full,blazeface:full+track+moving,blazeface:full+track"
SUFFIXES = ("tiles", "track", "moving")  # moving: track with skip_still off (a model on every frame)
CAMERA_CSV_COLUMNS = ("key", "detector", "track", "status", "reason", "recall", "fp_rate", "detect_p50_ms",
                      "detect_p95_ms", "detect_mean_ms", "face_p50_ms", "empty_p50_ms", "p50_vs_haar",
                      "mean_vs_haar", "empty_p50_vs_haar", "search_passes_per_frame", "checks_per_frame",
                      "followed_share", "still_share", "first_hit_max_frames", "first_hit_mean_frames",
                      "e2e_mean_ms", "fps", "decode_ms", "detect_share", "face_frames", "empty_frames", "info")
CAMERA_TABLE_COLUMNS = (("key", "detector", ""), ("status", "status", ""), ("recall", "recall", ".3f"),
                        ("fp_rate", "false-face frames", "pct"), ("detect_p50_ms", "p50 ms", ".2f"),
                        ("detect_mean_ms", "mean ms", ".2f"), ("empty_p50_ms", "p50 no face", ".2f"),
                        ("p50_vs_haar", "p50 / haar", ".3f"), ("search_passes_per_frame", "search/frame", ".2f"),
                        ("checks_per_frame", "checks/frame", ".2f"), ("followed_share", "followed", "pct"),
                        ("still_share", "still", "pct"),
                        ("first_hit_max_frames", "new face found after (max)", ""),
                        ("fps", "frames/s", ".1f"), ("detect_share", "detect share", "pct"))
CSV_COLUMNS = ("key", "detector", "status", "reason", "recall_photo", "recall_photo_min_rotation", "recall_lfw",
               "fp_rate", "false_boxes_per_face_frame", "angle_err_median_deg", "face_p50_ms", "face_p95_ms",
               "photo_p50_ms", "empty_p50_ms", "empty_p95_ms", "all_p50_ms", "p50_vs_haar", "photo_p50_vs_haar",
               "face_frames", "empty_frames", "info")
TABLE_COLUMNS = (("key", "detector", ""), ("status", "status", ""), ("recall_photo", "recall photo", ".3f"),
                 ("recall_photo_min_rotation", "worst rotation", ".3f"), ("recall_lfw", "recall lfw", ".3f"),
                 ("fp_rate", "false-face frames", "pct"),
                 ("false_boxes_per_face_frame", "extra boxes/face frame", ".3f"),
                 ("angle_err_median_deg", "roll err °", ".1f"), ("face_p50_ms", "p50 ms face", ".2f"),
                 ("face_p95_ms", "p95", ".2f"), ("photo_p50_ms", "p50 ms photo", ".2f"),
                 ("empty_p50_ms", "p50 ms no face", ".2f"),
                 ("all_p50_ms", "p50 ms all", ".2f"), ("p50_vs_haar", "p50 / haar", ".3f"))


def add_arguments(p) -> None:
    p.add_argument("--detectors", default=DEFAULT_DETECTORS,
                   help="comma list of NAME[:MODEL][+tiles][+track[+moving]], e.g. blazeface:full,"
                        f"blazeface:short+tiles,haar (default {DEFAULT_DETECTORS}); without +track every scene is "
                        "searched on its own; +moving: track but run a model on every frame (skip_still off)")
    p.add_argument("--photo-scenes", type=common.positive_int, default=60,
                   help="scenes per photo face (astronaut, grace_hopper; default 60 = 2 per rotation x scale)")
    p.add_argument("--lfw-faces", type=common.non_negative_int, default=50, help="LFW faces used (<= 100, default 50)")
    p.add_argument("--lfw-scenes", type=common.positive_int, default=6, help="scenes per LFW face (default 6)")
    p.add_argument("--face-free", type=common.non_negative_int, default=300, help="face-free frames (default 300)")
    p.add_argument("--seed", type=int, default=2024, help="scene seed (default 2024; thresholds were tuned on 0-11)")
    p.add_argument("--order", choices=("camera", "shuffled"), default="camera",
                   help="frame order: runs of one orientation then face-free frames (camera, default), or shuffled")
    p.add_argument("--min-size", type=common.positive_int, default=32,
                   help="FaceOptions.min_size for every detector (default 32: the smallest scene face is 48 px and "
                        "detector boxes are up to ~25%% smaller than the ground-truth square)")
    p.add_argument("--iou", type=common.positive_float, default=0.3, help="IoU that counts as found (default 0.3)")
    p.add_argument("--threads", type=common.positive_int, default=1, help="detector threads (BlazeFace; default 1)")
    p.add_argument("--warmup", type=common.non_negative_int, default=3, help="untimed frames first (default 3)")
    cam = p.add_argument_group("camera run (a video of slowly moving faces)")
    cam.add_argument("--camera-frames", type=common.non_negative_int, default=150,
                     help="frames of the camera clip (default 150; 0 = no camera run)")
    cam.add_argument("--camera-still-every", type=common.non_negative_int, default=0, metavar="K",
                     help="every K-th face segment of the clip neither moves nor turns (a sleeping infant; "
                          "default 0: every face drifts and turns)")
    cam.add_argument("--camera-detectors", default=DEFAULT_CAMERA_DETECTORS,
                     help=f"detectors of the camera run, as --detectors (default {DEFAULT_CAMERA_DETECTORS})")
    cam.add_argument("--camera-video", type=Path, default=None, metavar="AVI",
                     help="keep the clip as this MJPG .avi (e.g. for `infantino-bench pipeline --video`; "
                          "default: a temporary file)")
    cam.add_argument("--bundle", type=Path, default=None, metavar="B",
                     help="bundle directory or .tar: also time the whole frame path per camera detector "
                          "(Pipeline.predict_frame) and report detection's share of it")
    cam.add_argument("--public-key", default=None, metavar="PEM",
                     help="public key that signed the bundle (default $INFANTINO_PUBLIC_KEY)")
    cam.add_argument("--backend", default="auto", help="inference backend of the frame path (default auto)")
    common.add_output_arguments(p)


@dataclass
class DetRow:
    key: str
    options: object
    detector: object = None
    failure: Optional[str] = None
    found: list = field(default_factory=list)  # per face scene: bool
    angle_err: list = field(default_factory=list)  # photo hits of detectors that give an angle
    extra_boxes: int = 0
    fp: list = field(default_factory=list)  # per face-free scene: bool
    face_ms: list = field(default_factory=list)
    photo_ms: list = field(default_factory=list)
    empty_ms: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # scene index -> boxes


def parse_detectors(text: str, min_size: int, threads: int, largest_only: bool = False
                    ) -> list[tuple[str, object]]:
    """"blazeface:full+tiles,haar" -> [(key, FaceOptions)], names checked against the detector registry.

    track is off unless an entry says +track: the scenes are unrelated images, and a camera run compares
    searching every frame with following faces."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        base, *extras = part.split("+")
        name, _, model = base.partition(":")
        common.name_list(name, [d for d in list_detectors() if d != "full_frame"], "detectors", allow_all=False)
        kw = dict(detector=name, largest_only=largest_only, min_size=min_size, threads=threads, track=False)
        if model:
            if name != "blazeface":
                raise ValueError(f"--detectors {part}: only blazeface takes a model (short or full)")
            common.name_list(model, ("short", "full"), "models", allow_all=False)
            kw["model"] = model
        for extra in extras:
            if extra not in SUFFIXES or name != "blazeface" or len(set(extras)) != len(extras):
                raise ValueError(f"--detectors {part}: the suffixes are +tiles, +track and +track+moving, each "
                                 "once, for blazeface")
            kw[extra] = True
        if kw.pop("moving", False):
            if not kw["track"]:
                raise ValueError(f"--detectors {part}: +moving (skip_still off) goes with +track")
            kw["skip_still"] = False
        out.append((part, FaceOptions(**kw)))
    if not out:
        raise ValueError("--detectors: empty list")
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--detectors: repeated entries in {text!r}")
    return out


def matches(box, gt: tuple[int, int, int, int], iou: float) -> bool:
    """A detected box finds the ground-truth face: IoU >= iou, or its centre inside the ground-truth square."""
    x, y, w, h = gt
    cx, cy = box.x + box.w / 2.0, box.y + box.h / 2.0
    if x <= cx <= x + w and y <= cy <= y + h:
        return True
    ix = max(0, min(box.x + box.w, x + w) - max(box.x, x))
    iy = max(0, min(box.y + box.h, y + h) - max(box.y, y))
    inter = ix * iy
    return inter / float(box.w * box.h + w * h - inter) >= iou



def _make_rows(row_cls, specs):
    """One row per detector spec; a detector that cannot be created keeps its row with the reason."""
    rows = []
    for key, opts in specs:
        r = row_cls(key, opts)
        try:
            r.detector = create_detector(opts)
        except Exception as e:  # missing models / OpenCV without cascades: keep the row with the reason
            r.failure = f"{type(e).__name__}: {e}"
        rows.append(r)
    return rows

def run(args) -> int:
    specs = parse_detectors(args.detectors, args.min_size, args.threads)
    camera_specs = parse_detectors(args.camera_detectors, args.min_size, args.threads, largest_only=True) \
        if args.camera_frames else []
    common.check_output_paths(args)
    if args.lfw_faces > 100:
        raise ValueError(f"--lfw-faces: lfw_subset has 100 faces, got {args.lfw_faces}")
    if args.camera_video is not None and args.camera_video.suffix.lower() != ".avi":
        raise ValueError(f"--camera-video: the clip is written as MJPG .avi, got {args.camera_video.name}")
    if args.bundle is not None and not args.bundle.exists():
        raise FileNotFoundError(f"--bundle: no such bundle directory or .tar: {args.bundle}")

    rows = _make_rows(DetRow, specs)

    t0 = time.perf_counter()
    photos = sc.photo_face_sources()
    face_scenes = sc.composite_scenes(photos, n_per_face=args.photo_scenes, seed=args.seed)
    if args.lfw_faces:
        lfw = sc.composite_scenes(sc.lfw_face_sources(args.lfw_faces), n_per_face=args.lfw_scenes, seed=args.seed + 1)
        face_scenes += [_renumber(s, len(photos)) for s in lfw]
    empty_scenes = sc.face_free_scenes(args.face_free, seed=args.seed + 2)
    face_scenes = _ordered(face_scenes, args.order, args.seed)  # results are recorded in this order
    frames = face_scenes + empty_scenes
    log.info("made %d face and %d face-free frames in %.1f s", len(face_scenes), len(empty_scenes),
             time.perf_counter() - t0)
    machine = describe(threads=args.threads, peak=not args.no_peak)
    live = [r for r in rows if r.failure is None]
    examples = _example_indices(frames)

    console = rpt.make_console(stderr=True)
    from rich.progress import Progress  # optional: rich comes with the train extra only

    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("detect frames", total=args.warmup + len(frames))
        for i in range(args.warmup):  # warm-up on face frames: caches, allocations; memory reset afterwards
            for r in live:
                r.detector.detect(frames[i % len(frames)].frame)
            prog.advance(task)
        for r in live:  # a fresh detector state for the timed run (BlazeFace's orientation memory)
            r.detector = create_detector(r.options)
        for i, s in enumerate(frames):
            for j in rotation_order(len(live), i):
                r = live[j]
                if r.failure:
                    continue
                try:
                    t = time.perf_counter()
                    boxes = r.detector.detect(s.frame)
                    ms = (time.perf_counter() - t) * 1e3
                except Exception as e:
                    r.failure = f"{type(e).__name__}: {e}"
                    continue
                _record(r, s, boxes, ms, args.iou)
                if i in examples:
                    r.examples[i] = boxes
            prog.advance(task)
    camera = _camera_run(args, camera_specs, console) if camera_specs else None
    machine["load_average_end"] = load_average()

    out_rows = [_summarize(r, face_scenes, empty_scenes) for r in rows]
    haar = next((o for o in out_rows if o["detector"] == "haar" and o["status"] == "ok"), None)
    for o in out_rows:
        if o["status"] == "ok" and haar and haar.get("all_p50_ms"):
            o["p50_vs_haar"] = o["all_p50_ms"] / haar["all_p50_ms"]
            o["face_p50_vs_haar"] = o["face_p50_ms"] / haar["face_p50_ms"] if haar.get("face_p50_ms") else None
            o["photo_p50_vs_haar"] = o["photo_p50_ms"] / haar["photo_p50_ms"] if haar.get("photo_p50_ms") else None
            o["empty_p50_vs_haar"] = o["empty_p50_ms"] / haar["empty_p50_ms"] if haar.get("empty_p50_ms") else None
    breakdown = _breakdown(rows, face_scenes, empty_scenes)
    config = {"detectors": args.detectors, "photo_scenes": args.photo_scenes, "lfw_faces": args.lfw_faces,
              "lfw_scenes": args.lfw_scenes, "face_free": args.face_free, "seed": args.seed, "order": args.order,
              "min_size": args.min_size, "iou": args.iou, "threads": args.threads, "warmup": args.warmup,
              "rotations": list(sc.ROTATIONS), "scales": list(sc.SCALES), "brightness": list(sc.BRIGHTNESS),
              "frame_size": list(sc.FRAME_SIZE), "interleaved": True,
              "face_options": {r.key: r.options.model_dump(mode="json") for r in rows}}
    summary = {f"{o['key']}.{k}": o.get(k) for o in out_rows if o["status"] == "ok"
               for k in ("recall_photo", "recall_photo_min_rotation", "fp_rate", "all_p50_ms", "p50_vs_haar")}
    if camera is not None:
        for o in camera["rows"]:
            if o["status"] == "ok":
                summary.update({f"camera.{o['key']}.{k}": o.get(k)
                                for k in ("recall", "fp_rate", "detect_p50_ms", "p50_vs_haar", "detect_share")})
    report = rpt.make_report("detect", machine, config, out_rows, summary=summary, breakdown=breakdown,
                             samples_ms={r.key: [round(x, 4) for x in r.face_ms + r.empty_ms] for r in rows},
                             **({"camera": camera} if camera is not None else {}))
    cap = (f"{machine['cpu_model']}, {len(face_scenes)} face frames ({len(photos)} photo faces x "
           f"{args.photo_scenes}, {args.lfw_faces} LFW x {args.lfw_scenes}) + {len(empty_scenes)} face-free, "
           f"640x480, order={args.order}, seed={args.seed}, load {machine.get('load_average_start')} → "
           f"{machine['load_average_end']}")
    con = rpt.make_console()
    rpt.print_table("infantino-bench detect", TABLE_COLUMNS, out_rows, console=con, caption=cap)
    ok_keys = [o["key"] for o in out_rows if o["status"] == "ok"]
    for name in ("rotation", "scale"):
        for group in ("photo", "lfw"):
            table = breakdown[f"recall_by_{name}"][group]
            if not table:
                continue
            cols = ((name, name, ""), *[(k, k, ".3f") for k in ok_keys], ("n", "n", ""))
            rpt.print_table(f"recall by {name}: {group} faces", cols, table, console=con)
    if camera is not None:
        c = camera["config"]
        rpt.print_table("camera clip: per-frame search vs following faces", CAMERA_TABLE_COLUMNS, camera["rows"],
                        console=con, caption=f"{c['frames']} frames 640x480 ({c['face_frames']} with a face, "
                        f"{c['segments']} segments, still_every={c['still_every']}), MJPG decoded per frame, "
                        f"seed {c['seed']}"
                        + (f", frame path: {c['backend']} on {c['bundle']}" if c.get("bundle") else ""))
    common.write_outputs(report, args, CSV_COLUMNS, lambda rep, out: _plots(rep, out, (frames, examples, rows)))
    if camera is not None and args.csv is not None:
        path = rpt.write_csv(args.csv.with_name(f"{args.csv.stem}_camera.csv"), camera["rows"], machine,
                             CAMERA_CSV_COLUMNS)
        print(f"wrote {path}")
    return 0


# ---- the camera run ------------------------------------------------------------------------------------------
@dataclass
class CamRow:
    key: str
    options: object
    detector: object = None
    pipe: object = None
    failure: Optional[str] = None
    found: list = field(default_factory=list)  # per face frame: bool
    fp: list = field(default_factory=list)  # per face-free frame: bool
    face_ms: list = field(default_factory=list)  # detection ms per face frame
    empty_ms: list = field(default_factory=list)
    e2e_ms: list = field(default_factory=list)  # decode + predict_frame, with --bundle
    stats0: dict = field(default_factory=dict)  # detector counters when timing started


def _camera_run(args, specs: list, console) -> dict:
    """Run the camera clip through every camera detector, frame by frame in rotating order (see module doc)."""
    import cv2  # optional: OpenCV (device/train extras)

    rows = _make_rows(CamRow, specs)
    bundle = None
    if args.bundle is not None:
        bundle = load_bundle(args.bundle, public_key=args.public_key)
        for r in rows:
            if r.failure is None:
                try:
                    r.pipe = Pipeline(bundle, backend=args.backend, detector=r.detector, threads=args.threads)
                except Exception as e:  # backend missing: the row says why
                    r.failure = f"{type(e).__name__}: {e}"

    t0 = time.perf_counter()
    seed = args.seed + 4
    clip = sc.camera_scenes(sc.photo_face_sources(), n_frames=args.camera_frames, seed=seed,
                            still_every=args.camera_still_every)
    video, tmp = common.kept_or_temp(args.camera_video, "camera.avi", "infantino-camera-")
    try:
        sc.write_video(video, [s.frame for s in clip])
        log.info("camera clip: %d frames in %.1f s -> %s", len(clip), time.perf_counter() - t0, video)
        live = [r for r in rows if r.failure is None]
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise RuntimeError(f"OpenCV cannot read back {video}")
        decode_ms: list[float] = []
        from rich.progress import Progress  # optional: rich comes with the train extra only

        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("camera frames", total=len(clip))
            for i, s in enumerate(clip):
                t = time.perf_counter()
                ok, frame = cap.read()
                dec = (time.perf_counter() - t) * 1e3
                if not ok:
                    raise RuntimeError(f"{video}: frame {i} could not be decoded")
                decode_ms.append(dec)
                if i == 0:  # warm up on the first frame, then start every detector afresh
                    for r in live:
                        for _ in range(max(1, args.warmup)):
                            (r.pipe.predict_frame if r.pipe else r.detector.detect)(frame)
                        r.detector.reset()
                        r.stats0 = dict(getattr(r.detector, "stats", {}))
                for j in rotation_order(len(live), i):
                    r = live[j]
                    if r.failure:
                        continue
                    try:
                        t = time.perf_counter()
                        if r.pipe is not None:
                            res = r.pipe.predict_frame(frame)
                            total = (time.perf_counter() - t) * 1e3
                            ms = float(res.timings["detect"])
                            boxes = [Box(*f.box) for f in res.faces]
                            r.e2e_ms.append(dec + total)
                        else:
                            boxes = r.detector.detect(frame)
                            ms = (time.perf_counter() - t) * 1e3
                    except Exception as e:
                        r.failure = f"{type(e).__name__}: {e}"
                        continue
                    if s.has_face:
                        r.face_ms.append(ms)
                        r.found.append(any(matches(b, s.box, args.iou) for b in boxes))
                    else:
                        r.empty_ms.append(ms)
                        r.fp.append(bool(boxes))
                prog.advance(task)
        cap.release()
    finally:
        for r in rows:
            if r.pipe is not None:
                r.pipe.close()
        if tmp is not None:
            tmp.cleanup()
    out = [_camera_summary(r, clip, decode_ms) for r in rows]
    haar = next((o for o in out if o["detector"] == "haar" and o["status"] == "ok"), None)
    for o in out:
        if o["status"] == "ok" and haar:
            for k, ref in (("p50_vs_haar", "detect_p50_ms"), ("mean_vs_haar", "detect_mean_ms"),
                           ("empty_p50_vs_haar", "empty_p50_ms")):
                o[k] = o[ref] / haar[ref] if o.get(ref) is not None and haar.get(ref) else None
    segments = sorted({s.segment for s in clip})
    config = {"frames": len(clip), "face_frames": sum(s.has_face for s in clip), "segments": len(segments),
              "seed": seed, "still_every": args.camera_still_every, "detectors": args.camera_detectors,
              "min_size": args.min_size, "iou": args.iou,
              "video": None if tmp is not None else str(video), "bundle": str(args.bundle) if args.bundle else None,
              "backend": args.backend if args.bundle else None, "decode_p50_ms": _pct(decode_ms, 50),
              "face_options": {r.key: r.options.model_dump(mode="json") for r in rows},
              "segments_plan": [{"segment": k, "frames": sum(s.segment == k for s in clip),
                                 "face": next((s.source for s in clip if s.segment == k), None),
                                 "rotation_start": next((s.rotation for s in clip if s.segment == k), None),
                                 "scale": next((s.scale for s in clip if s.segment == k), None)} for k in segments]}
    return {"config": config, "rows": out,
            "samples_ms": {r.key: [round(x, 4) for x in _in_clip_order(r, clip)] for r in rows}}


def _in_clip_order(r: CamRow, clip: list) -> list[float]:
    """Detection ms per frame in clip order (face and face-free frames interleaved again)."""
    face, empty = iter(r.face_ms), iter(r.empty_ms)
    out = []
    for s in clip:
        v = next(face if s.has_face else empty, None)
        if v is None:
            break
        out.append(v)
    return out


def _first_hits(r: CamRow, clip: list) -> list[int]:
    """Per face segment: frames from its first frame until the detector first found the face (0 = at once);
    a segment whose face was never found counts its length."""
    found = iter(r.found)
    per_seg: dict[int, list[bool]] = {}
    for s in clip:
        if s.has_face:
            per_seg.setdefault(s.segment, []).append(next(found, False))
    return [hits.index(True) if True in hits else len(hits) for hits in per_seg.values()]


def _camera_summary(r: CamRow, clip: list, decode_ms: list[float]) -> dict:
    o = r.options
    d = {"key": r.key, "detector": o.detector, "track": bool(o.track and o.detector == "blazeface"),
         "status": "ok" if r.failure is None and (r.face_ms or r.empty_ms) else "failed",
         "reason": r.failure, "info": _info(r)}
    if d["status"] != "ok":
        d["reason"] = d["reason"] or "no frames timed"
        return d
    all_ms = r.face_ms + r.empty_ms
    n = len(all_ms)
    first = _first_hits(r, clip)
    d.update({"recall": float(np.mean(r.found)) if r.found else None,
              "fp_rate": float(np.mean(r.fp)) if r.fp else None,
              "detect_p50_ms": _pct(all_ms, 50), "detect_p95_ms": _pct(all_ms, 95),
              "detect_mean_ms": float(np.mean(all_ms)), "face_p50_ms": _pct(r.face_ms, 50),
              "empty_p50_ms": _pct(r.empty_ms, 50), "face_frames": len(r.face_ms), "empty_frames": len(r.empty_ms),
              "first_hit_max_frames": max(first) if first else None,
              "first_hit_mean_frames": float(np.mean(first)) if first else None})
    stats = getattr(r.detector, "stats", None)
    if stats is not None:
        delta = {k: stats[k] - r.stats0.get(k, 0) for k in stats}
        d.update({"search_passes_per_frame": delta["search_passes"] / n, "checks_per_frame": delta["checks"] / n,
                  "followed_share": delta["followed"] / n, "still_share": delta["still"] / n})
    if r.e2e_ms:
        e2e = float(np.mean(r.e2e_ms))
        d.update({"e2e_mean_ms": e2e, "fps": 1000.0 / e2e, "decode_ms": float(np.mean(decode_ms)),
                  "detect_share": d["detect_mean_ms"] / e2e})
    return d


def _renumber(s, offset: int):
    return replace(s, face_index=s.face_index + offset)


def _ordered(scenes: list, order: str, seed: int) -> list:
    """Camera order: runs of one orientation (0, 30, -30, 90, 180, 270), sources mixed within a run."""
    rng = np.random.default_rng(seed + 3)
    idx = rng.permutation(len(scenes))
    mixed = [scenes[i] for i in idx]
    if order == "shuffled":
        return mixed
    rank = {r: i for i, r in enumerate(ROTATIONS)}
    return sorted(mixed, key=lambda s: rank.get(s.rotation, len(rank)))


def _example_indices(frames: list) -> list[int]:
    """One photo-face frame per rotation, preferring 96-144 px faces (readable at half size)."""
    picked: dict[int, tuple[bool, int]] = {}
    for i, s in enumerate(frames):
        if s.has_face and s.face_index < 2:
            good = 96 <= s.scale <= 144
            if s.rotation not in picked or (good and not picked[s.rotation][0]):
                picked[s.rotation] = (good, i)
    return [i for _, i in picked.values()]


def _record(r: DetRow, s, boxes, ms: float, iou: float) -> None:
    if not s.has_face:
        r.empty_ms.append(ms)
        r.fp.append(bool(boxes))
        return
    r.face_ms.append(ms)
    if s.face_index < 2:
        r.photo_ms.append(ms)
    hits = [b for b in boxes if matches(b, s.box, iou)]
    r.found.append(bool(hits))
    r.extra_boxes += len(boxes) - min(len(hits), 1)
    if hits and s.face_index < 2 and hits[0].angle is not None:
        d = abs((hits[0].angle - s.rotation + 180.0) % 360.0 - 180.0)
        r.angle_err.append(d)


def _pct(v: list, q: float) -> Optional[float]:
    return float(np.percentile(v, q)) if v else None


def _summarize(r: DetRow, faces: list, empty: list) -> dict:
    o = {"key": r.key, "detector": r.options.detector, "status": "ok" if r.failure is None else "failed",
         "reason": r.failure, "info": _info(r)}
    if r.failure is not None:
        return o
    found = np.asarray(r.found, bool)
    photo = np.asarray([s.face_index < 2 for s in faces], bool)
    rots = np.asarray([s.rotation for s in faces])
    per_rot = [float(found[photo & (rots == x)].mean()) for x in sorted(set(rots[photo].tolist()))]
    o.update({
        "recall_photo": float(found[photo].mean()) if photo.any() else None,
        "recall_photo_min_rotation": min(per_rot) if per_rot else None,
        "recall_lfw": float(found[~photo].mean()) if (~photo).any() else None,
        "fp_rate": float(np.mean(r.fp)) if r.fp else None,
        "false_boxes_per_face_frame": r.extra_boxes / max(1, len(faces)),
        "angle_err_median_deg": _pct(r.angle_err, 50), "angle_err_p95_deg": _pct(r.angle_err, 95),
        "face_p50_ms": _pct(r.face_ms, 50), "face_p95_ms": _pct(r.face_ms, 95),
        "photo_p50_ms": _pct(r.photo_ms, 50), "photo_p95_ms": _pct(r.photo_ms, 95),
        "empty_p50_ms": _pct(r.empty_ms, 50), "empty_p95_ms": _pct(r.empty_ms, 95),
        "all_p50_ms": _pct(r.face_ms + r.empty_ms, 50), "all_p95_ms": _pct(r.face_ms + r.empty_ms, 95),
        "face_frames": len(r.face_ms), "empty_frames": len(r.empty_ms),
    })
    return o


def _info(r: DetRow) -> str:
    o = r.options
    if o.detector == "blazeface":
        return (f"model={o.model} tiles={o.tiles} rotations={list(o.rotations)} min_score={o.min_score} "
                f"verify_score={o.verify_score} threads={o.threads} track={o.track}"
                + (f" redetect_every={o.redetect_every} idle_after={o.idle_after} skip_still={o.skip_still}"
                   if o.track else ""))
    if o.detector == "haar":
        return f"scale_factor={o.scale_factor} min_neighbors={o.min_neighbors} equalize={o.equalize}"
    return ""


def _breakdown(rows: list[DetRow], faces: list, empty: list) -> dict:
    """Recall by rotation, scale and source (photo / lfw), and false-face rate by background kind."""
    live = [r for r in rows if r.failure is None]
    out: dict = {"recall_by_rotation": {}, "recall_by_scale": {}, "recall_by_source": [], "fp_by_kind": []}
    for name, values, attr in (("rotation", ROTATIONS, "rotation"), ("scale", SCALES, "scale")):
        for group, keep in (("photo", lambda s: s.face_index < 2), ("lfw", lambda s: s.face_index >= 2)):
            table = []
            for v in values:
                idx = [i for i, s in enumerate(faces) if keep(s) and getattr(s, attr) == v]
                if not idx:
                    continue
                row = {name: v, "n": len(idx)}
                for r in live:
                    row[r.key] = float(np.mean([r.found[i] for i in idx]))
                table.append(row)
            out[f"recall_by_{name}"][group] = table
    for src in sorted({s.source for s in faces if s.face_index < 2}) + ["lfw"]:
        idx = [i for i, s in enumerate(faces) if (s.source == src if src != "lfw" else s.face_index >= 2)]
        if idx:
            out["recall_by_source"].append({"source": src, "n": len(idx),
                                            **{r.key: float(np.mean([r.found[i] for i in idx])) for r in live}})
    for kind in sorted({s.background for s in empty}):
        idx = [i for i, s in enumerate(empty) if s.background == kind]
        out["fp_by_kind"].append({"kind": kind, "n": len(idx),
                                  **{r.key: float(np.mean([r.fp[i] for i in idx])) for r in live}})
    return out


# ---- plots ---------------------------------------------------------------------------------------------------
def _plots(report: dict, out: Path, examples: Optional[tuple] = None) -> list[Path]:
    files = [_plot_recall(report, out / "detect_recall.png"),
             rpt.plot_latency_distribution({k: v for k, v in report["samples_ms"].items() if v},
                                           out / "detect_latency.png", "detection latency per frame (all frames)",
                                           xlabel="ms per frame")]
    if examples is not None:
        files.append(draw_examples(*examples, out / "detect_example.png"))
    return files


def _plot_recall(report: dict, path: Path) -> Path:
    """Grouped bars: recall per rotation (photo and LFW faces) and per face size (photo), one bar per detector,
    and the false-face rate; dashed lines are the goals."""
    plt = rpt._pyplot()
    b = report["breakdown"]
    keys = [r["key"] for r in report["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw={"width_ratios": [3, 3, 2.5, 1.4]})
    panels = ((axes[0], b["recall_by_rotation"]["photo"], "rotation", "photo faces by rotation (° clockwise)"),
              (axes[1], b["recall_by_rotation"]["lfw"], "rotation", "LFW 25x25 faces (upscaled) by rotation"),
              (axes[2], b["recall_by_scale"]["photo"], "scale", "photo faces by face size (px)"))
    width = 0.8 / max(1, len(keys))
    for ax, table, name, title in panels:
        x = np.arange(len(table))
        for i, k in enumerate(keys):
            ax.bar(x + (i - (len(keys) - 1) / 2) * width, [row[k] for row in table], width, label=k)
        ax.set_xticks(x, [str(row[name]) for row in table])
        ax.axhline(0.95, color="k", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if not table:
            ax.text(0.5, 0.5, "no scenes", ha="center", va="center", transform=ax.transAxes)
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    ax = axes[3]
    fp = [100 * (r["fp_rate"] or 0) for r in ok]
    colours = [f"C{i}" for i in range(len(ok))]
    ax.bar(range(len(ok)), fp, color=colours)
    for i, v in enumerate(fp):
        ax.text(i, v + 0.1, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ok)), [""] * len(ok))
    ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, max(fp + [1.0]) * 1.3)
    ax.set_ylabel("% of face-free frames with a false face")
    ax.set_title("false faces", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(keys), fontsize=9, bbox_to_anchor=(0.5, -0.04))
    fig.suptitle("infantino-bench detect — dashed: goals (recall ≥ 0.95 at every rotation, false faces ≤ 1 %)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = rpt._save(fig, path)
    plt.close(fig)
    return path


def draw_examples(frames: list, indices: list[int], rows: list[DetRow], path: Path) -> Path:
    """A grid of example frames: ground truth (white), each detector's boxes in its colour, BlazeFace keypoints."""
    import cv2  # optional: OpenCV (device/train extras)

    colours = [(0, 200, 255), (255, 120, 0), (0, 0, 255), (200, 0, 200), (0, 160, 0)]
    tiles = []
    for i in indices:
        s = frames[i]
        img = s.frame.copy()
        x, y, w, h = s.box
        cv2.rectangle(img, (x, y), (x + w, y + h), (255, 255, 255), 1)
        for c, r in enumerate(rows):
            for b in r.examples.get(i, []):
                col = colours[c % len(colours)]
                cv2.rectangle(img, (b.x, b.y), (b.x + b.w, b.y + b.h), col, 2)
                for kx, ky in (b.keypoints or ())[:4]:
                    cv2.circle(img, (int(round(kx)), int(round(ky))), 3, col, -1)
        cv2.putText(img, f"{s.source} {s.rotation} deg {s.scale}px", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 2)
        tiles.append(img)
    if not tiles:
        tiles = [np.zeros((480, 640, 3), np.uint8)]
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[k:k + 3], axis=1) for k in range(0, len(tiles), 3)], axis=0)
    legend = np.zeros((44, grid.shape[1], 3), np.uint8)
    cv2.putText(legend, "white: ground truth", (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
    for c, r in enumerate(rows):
        cv2.putText(legend, r.key, (340 + 330 * c, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, colours[c % len(colours)], 2)
    grid = np.concatenate([legend, grid], axis=0)
    grid = cv2.resize(grid, (grid.shape[1] // 2, grid.shape[0] // 2), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("cannot encode the example image")
    atomic_write_bytes(path, buf.tobytes())
    return path

"""Real faces through the whole path: agreement with the FER-2013 teacher on held-out real faces, as crops and
composited into camera frames (detector -> upright crop -> backend -> head), by rotation and scale, per backend.

The figure is the real-face guard's (trainer.realface_guard): top-1 agreement with the fer package's TFLite on
faces never trained on. See docs/real-faces.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.head import Head
from infantino.runtime.face import FaceOptions, create_detector

from .. import common
from .. import report as rpt
from ..machine import describe, load_average
from ..realfaces import measure
from .pipeline import parse_backends

log = logging.getLogger(__name__)

HELP = "agreement with the FER-2013 teacher on held-out real faces, crops and whole frames, per backend"
TABLE_COLUMNS = (("key", "pipeline", ""), ("status", "status", ""), ("crop_agreement", "crops", ".3f"),
                 ("crop_agreement_confident", "confident", ".3f"), ("scene_found", "found", ".3f"),
                 ("scene_agreement", "label kept", ".3f"), ("scene_same_crop", "same crop", ".3f"),
                 *[(f"agreement_rot_{r}", f"rot {r}", ".2f") for r in (0, 30, -30, 90, 180, 270)])


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, type=Path, metavar="B", help="bundle directory or .tar")
    p.add_argument("--public-key", default=None, metavar="PEM",
                   help="public key that signed the bundle (default $INFANTINO_PUBLIC_KEY)")
    p.add_argument("--head", type=Path, default=None, metavar="H",
                   help="head file to score instead of the bundle's (e.g. a device's current head.infh)")
    p.add_argument("--backends", default="auto",
                   help="comma list: auto, onnxruntime, tflite:fp16, tflite:int8, ... (default auto)")
    p.add_argument("--detector", default="blazeface", help="face detector for the frames (default blazeface)")
    p.add_argument("--scenes-per-face", type=common.non_negative_int, default=6,
                   help="frames per held-out face (rotations cycle; default 6; 0 = crops only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the composited frames")
    p.add_argument("--threads", type=common.positive_int, default=None, help="CPU threads per backend")
    common.add_output_arguments(p)


def run(args) -> int:
    specs = parse_backends(args.backends)
    common.check_output_paths(args)
    if not args.bundle.exists():
        raise FileNotFoundError(f"--bundle: no such bundle directory or .tar: {args.bundle}")
    create_detector(FaceOptions(detector=args.detector))  # unknown names fail before any work
    bundle = load_bundle(args.bundle, public_key=args.public_key)
    head = None
    if args.head is not None:
        if not args.head.is_file():
            raise FileNotFoundError(f"--head: no such file: {args.head}")
        head = Head.from_bytes(args.head.read_bytes())
    threads = common.default_threads(args)
    machine = describe(threads=threads, peak=False)
    rows = measure(bundle, specs, head=head, detector=args.detector, n_per_face=args.scenes_per_face,
                   seed=args.seed, threads=threads, scenes=args.scenes_per_face > 0, progress=True)
    machine["load_average_end"] = load_average()
    flat = [r.flat() for r in rows]
    config = {"bundle": str(args.bundle), "head": str(args.head) if args.head else "bundle",
              "head_version": (head or bundle.head).version, "backends": args.backends, "detector": args.detector,
              "scenes_per_face": args.scenes_per_face, "seed": args.seed, "threads": threads}
    report = rpt.make_report("realfaces", machine, config, flat,
                             details={r.key: {"crops": r.crops, "scenes": r.scenes} for r in rows})
    rpt.print_table("infantino-bench realfaces (top-1 agreement with the FER-2013 teacher, held-out faces)",
                    TABLE_COLUMNS, flat, console=rpt.make_console(),
                    caption=f"head v{config['head_version']}; frames: 640x480, faces 48-240 px; missed face = "
                            "disagreement")
    common.write_outputs(report, args, None, _plots)
    return 0


def _plots(report: dict, out: Path) -> list[Path]:
    series = {}
    for key, d in report["details"].items():
        rot = d.get("scenes", {}).get("by_rotation", {})
        if rot:
            xs = [int(k) for k in rot]
            series[key] = (xs, [rot[k]["agreement"] for k in rot])
    if not series:
        return []
    return [rpt.plot_lines(series, out / "realfaces_by_rotation.png",
                           "agreement with the teacher on held-out real faces in frames", "rotation (degrees)",
                           "top-1 agreement")]

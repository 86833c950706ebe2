"""Label a recent frame: the running daemon publishes that frame's face embedding with the label to the
samples topic (the image never leaves the device). Without --frame-id the latest frame with a face is used."""

from __future__ import annotations

import json

from infantino.device.remote import send_command
from infantino.runtime.contract.classes import CLASSES

HELP = "label a recent frame (publishes its embedding + label for online learning)"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="the device's device.yaml")
    p.add_argument("--label", required=True, choices=CLASSES, action="append", help="the expression shown in the "
                   "frame; give it more than once when the expression is ambiguous (learned as vote fractions)")
    p.add_argument("--frame-id", type=int, default=None, help="frame id from the predictions topic (default: latest "
                   "frame with a face)")
    p.add_argument("--annotator", default=None, help="who labelled (kept with the sample)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon's answer")


def run(args) -> int:
    labels = {"label": args.label[0]} if len(args.label) == 1 else {"labels": args.label}
    reply = send_command(args.config, {"command": "label", **labels, "frame_id": args.frame_id,
                                       "annotator": args.annotator}, timeout=args.timeout)
    print(json.dumps(reply, indent=2))
    return 0

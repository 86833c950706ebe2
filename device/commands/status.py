"""Print the device's retained status message (online/offline, head version, fps, latency, errors)."""

from __future__ import annotations

import json

from infantino.device.remote import read_status

HELP = "show the device's last status"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="the device's device.yaml")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")


def run(args) -> int:
    print(json.dumps(read_status(args.config, timeout=args.timeout), indent=2))
    return 0

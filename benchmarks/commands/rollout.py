"""Staged rollout on a loopback fleet of real device daemons: good streams and poisoned bursts, time-to-commit and
time-to-rollback, the health gate's figures (docs/scaling.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

HELP = "staged rollout: good vs poisoned label streams -> commit / rollback times and gate figures"
log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--devices", type=common.positive_int, default=20, help="device daemons (default 20)")
    p.add_argument("--canary", type=common.positive_int, default=3, help="of them in the canary ring (default 3)")
    p.add_argument("--rounds", type=common.positive_int, default=3, help="good + poisoned rounds (default 3)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--workdir", type=Path, help="broker, service and device state (default: a temp folder)")


def run(args) -> int:
    from infantino.benchmarks.rollout import measure_rollout  # local: daemons, service, sklearn

    if args.canary >= args.devices:
        raise ValueError("--canary must be smaller than --devices (the rest of the fleet is what it protects)")
    machine = describe(peak=False)
    out = measure_rollout(args.devices, args.canary, args.rounds, workdir=args.workdir,
                          progress=lambda s: log.info("%s", s))
    machine["load_average_end"] = load_average()
    print(json.dumps(out, indent=2))
    if args.json:
        rpt.write_json(args.json, rpt.make_plain_report("rollout", machine, common.args_config(args), out))
    ok = out["good_committed"] == args.rounds and out["poison_rolled_back"] == args.rounds
    return 0 if ok else 1

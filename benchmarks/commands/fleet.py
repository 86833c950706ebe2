"""A fleet under load on loopback: N device daemons with their own MQTT clients and one update service, each
device sending labelled samples for a while; convergence, update latency p50/p99, dropped samples, service and
device CPU, broker message counts (docs/reliability.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

HELP = "fleet load: N devices x samples/s -> convergence, update latency, CPU, broker messages"
log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--devices", type=common.positive_int, default=50, help="device daemons (default 50)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long samples stream (default 60)")
    p.add_argument("--rate", type=float, default=1.0, help="labelled samples per second per device (default 1)")
    p.add_argument("--min-interval-ms", type=int, default=200, help="the service's update interval (default 200)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--workdir", type=Path, help="keys, broker, service and device state (default: a temp folder)")


def run(args) -> int:
    from infantino.benchmarks.fleet import measure_fleet  # local: daemon, service, sklearn, only when this runs

    if args.seconds <= 0 or args.rate <= 0:
        raise ValueError("--seconds and --rate must be positive")
    machine = describe(peak=False)
    out = measure_fleet(args.devices, args.seconds, args.rate, min_interval_ms=args.min_interval_ms,
                        workdir=args.workdir, progress=lambda s: log.info("%s", s))
    machine["load_average_end"] = load_average()
    print(json.dumps(out, indent=2))
    if args.json:
        rpt.write_json(args.json, rpt.make_plain_report("fleet", machine, common.args_config(args), out))
    return 0 if out["converged"] else 1

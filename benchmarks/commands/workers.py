"""Several update-service workers sharing F fleets x M devices on loopback: samples learned per second, update
latency p50/p99, drain time and CPU per worker count (docs/scaling.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

HELP = "service workers: 1, 2, 4... workers over F fleets x M devices -> learned/s, update latency, CPU"
log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--fleets", type=common.positive_int, default=10, help="fleets (default 10)")
    p.add_argument("--devices", type=common.positive_int, default=20, help="devices per fleet (default 20)")
    p.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long samples stream (default 20)")
    p.add_argument("--rate", type=float, default=600.0, help="offered samples per second, all fleets (default 600)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--workdir", type=Path, help="keys, brokers and service state (default: a temp folder)")


def run(args) -> int:
    from infantino.benchmarks.workers import measure_workers  # local: subprocess workers, sklearn

    try:
        counts = [int(v) for v in args.workers.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--workers must be comma-separated counts, got {args.workers!r}") from None
    if not counts or min(counts) < 1 or args.seconds <= 0 or args.rate <= 0:
        raise ValueError("--workers counts, --seconds and --rate must be positive")
    machine = describe(peak=False)
    out = measure_workers(args.fleets, args.devices, counts, args.seconds, args.rate, workdir=args.workdir,
                          progress=lambda s: log.info("%s", s))
    machine["load_average_end"] = load_average()
    print(json.dumps(out, indent=2))
    if args.json:
        rpt.write_json(args.json, rpt.make_plain_report("workers", machine, common.args_config(args), out))
    return 0 if all(r["drained"] for r in out["rows"]) else 1

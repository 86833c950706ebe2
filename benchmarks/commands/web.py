"""The camera loop's fps with the device page open in headless Chromium vs closed, interleaved in one run
(goal: at most 5 % lower with the page open); docs/device.md "Web app and API"."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

HELP = "camera-loop fps with the device web page open vs closed (headless Chromium)"
log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="a compiled bundle (e.g. demo-out/bundle after make demo)")
    p.add_argument("--public-key", required=True, type=Path, help="the key that verifies it")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="closed/open pairs (default 3)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--detector", default="blazeface", help="face detector (default blazeface)")
    p.add_argument("--live-max-fps", type=float, default=5.0, help="the page's live view rate (default 5)")
    p.add_argument("--no-pin", action="store_true", help="do not hold the daemon to CPU 0 and Chromium to CPU 1")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--workdir", type=Path, help="broker and device state (default: a temp folder)")


def run(args) -> int:
    # local: Selenium, FastAPI and the runtime load only when this benchmark runs
    from infantino.benchmarks.webload import measure_web

    if args.seconds <= 0 or args.rounds < 1:
        raise ValueError("--seconds must be positive and --rounds at least 1")
    machine = describe(threads=args.threads, peak=False)
    out = measure_web(args.bundle, args.public_key, seconds=args.seconds, rounds=args.rounds, backend=args.backend,
                      threads=args.threads, detector=args.detector, live_max_fps=args.live_max_fps,
                      pin=not args.no_pin, workdir=args.workdir, progress=lambda s: log.info("%s", s))
    machine["load_average_end"] = load_average()
    print(json.dumps(out, indent=2))
    if args.json:
        rows = [{"key": f"round {r['round']} {r['phase']}", **r} for r in out["rows"]]  # keyed for `compare`
        rpt.write_json(args.json, rpt.make_plain_report("web", machine, common.args_config(args), {**out, "rows": rows}))
    return 0

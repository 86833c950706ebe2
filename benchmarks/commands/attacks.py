"""Hostile head updates against a running device daemon over a real Mosquitto (zlib bombs, crafted shapes,
forged copies, oversize and wrong-fleet messages): the reason each is refused with, the time until it is, the
resident memory it costs the daemon, and that a valid update still applies afterwards (docs/reliability.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

HELP = "hostile head updates against a running daemon: reason, time to reject, memory cost"
log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--workdir", type=Path, help="keys, broker and device state (default: a temp folder)")


def run(args) -> int:
    from infantino.benchmarks.attacks import measure_attacks  # local: the daemon + paho, only when this runs

    machine = describe(peak=False)
    out = measure_attacks(args.workdir, progress=lambda name: log.info("sending: %s", name))
    print(f"{'attack':58s} {'bytes':>10s} {'reason':>14s} {'s to reject':>12s} {'RSS +MB':>8s} alive")
    for r in out["rows"]:
        secs = f"{r['seconds_to_reject']:.3f}" if r["seconds_to_reject"] is not None else "never"
        print(f"{r['attack']:58s} {r['bytes_sent']:>10d} {str(r['reason']):>14s} {secs:>12s} "
              f"{r['rss_growth_mb']:>8.1f} {r['daemon_alive']}")
    print(f"valid update applied afterwards: {out['valid_update_applied_after']}")
    machine["load_average_end"] = load_average()
    if args.json:
        rows = [{"key": r["attack"], **r} for r in out["rows"]]  # keyed rows: `infantino-bench compare` matches them
        rpt.write_json(args.json, rpt.make_plain_report("attacks", machine, common.args_config(args),
                                                        {**out, "rows": rows}))
    ok = out["valid_update_applied_after"] and all(r["reason"] and r["daemon_alive"] for r in out["rows"])
    return 0 if ok else 1

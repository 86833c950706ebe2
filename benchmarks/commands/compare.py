"""Compare two runs of the same benchmark (two hosts, or before and after a change): the two machines, then every
numeric metric of both runs matched by row key, with the ratio B/A (above 1: B measured more, e.g. slower for a
time, faster for a rate).

    infantino-bench compare before.json after.json [--filter learn_one]
"""

from __future__ import annotations

from pathlib import Path

from .. import report as rpt
from ..compare import compare, load_run, machine_summary

HELP = "ratio B/A of every metric of two benchmark JSON files (e.g. two hosts, before/after), machines on top"
TABLE_COLUMNS = (("name", "metric", ""), ("unit", "unit", ""), ("a", "A", ".4g"), ("b", "B", ".4g"),
                 ("ratio", "B/A", ".3f"))


def add_arguments(p) -> None:
    p.add_argument("a", type=Path, metavar="A.json", help="the reference run (a --json file of infantino-bench)")
    p.add_argument("b", type=Path, metavar="B.json", help="the run compared with it")
    p.add_argument("--filter", default=None, metavar="TEXT", help="only metrics whose name contains TEXT")


def run(args) -> int:
    c = compare(load_run(args.a), load_run(args.b))
    metrics = [m for m in c.metrics if args.filter is None or args.filter in m.name]
    console = rpt.make_console()
    console.print(f"A = {args.a}: {machine_summary(c.machines[0])}", highlight=False, soft_wrap=True)
    console.print(f"B = {args.b}: {machine_summary(c.machines[1])}", highlight=False, soft_wrap=True)
    rows = [{"name": m.name, "unit": m.unit, "a": m.a, "b": m.b, "ratio": m.ratio} for m in metrics]
    rpt.print_table(f"infantino-bench compare ({c.kind}): B/A", TABLE_COLUMNS, rows, console=console)
    for label, keys in (("only in A", c.only_a), ("only in B", c.only_b), ("not ok in A or B", c.not_ok)):
        if keys:
            console.print(f"rows {label}: {', '.join(keys)}", highlight=False, soft_wrap=True)
    if not metrics:
        console.print(f"no metric name contains {args.filter!r}", highlight=False)
    return 0

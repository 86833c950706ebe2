"""Arguments and output handling shared by the `infantino-bench` subcommands (timing budget, files, MLflow)."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from infantino.runtime.choices import unknown_message

from . import report as rpt
from .mlflow_log import log_report

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "infantino-bench"


# ---- argument helpers ------------------------------------------------------------------------------------
def _checked(cast, ok, what: str):
    """An argparse type: `cast` the text, then require `ok(value)`; the error says what was expected."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    parse.__name__ = what
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive number")


def int_list(text: str) -> list[int]:
    """"1,8,32" -> [1, 8, 32] (positive, de-duplicated, order kept)."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        out.append(positive_int(part))
    if not out:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return list(dict.fromkeys(out))


def kept_or_temp(path: Optional[Path], name: str, prefix: str) -> tuple[Path, Optional[tempfile.TemporaryDirectory]]:
    """(where to write `name`, the temporary folder to clean up or None): `path` when the user asked to keep the
    file (its folder made), else `name` in a new temporary folder."""
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        return Path(tmp.name) / name, tmp
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path), None


def parse_backend_specs(text: str, names: list[str]) -> list[tuple[str, Optional[str]]]:
    """"onnxruntime:fp32,tflite" -> [("onnxruntime", "fp32"), ("tflite", None)]: each name checked against
    `names`, each precision against fp32/fp16/int8; repeats dropped, order kept (may be empty)."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, prec = part.partition(":")
        name_list(name, names, "backends", allow_all=False)
        if prec:
            name_list(prec, ("fp32", "fp16", "int8"), "precisions", allow_all=False)
        out.append((name, prec or None))
    return list(dict.fromkeys(out))


def name_list(text: str, valid: Sequence[str], what: str, allow_all: bool = True) -> Optional[list[str]]:
    """"a,b" -> [a, b] checked against `valid`; "all" -> None. ValueError names the bad entry and choices."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--{what}: empty list")
    if allow_all and parts == ["all"]:
        return None
    for p in parts:
        if p not in valid:
            raise ValueError(f"--{what}: " + unknown_message(what.rstrip('s'), p,
                                                           (['all'] if allow_all else []) + list(valid)))
    return list(dict.fromkeys(parts))


def add_timing_arguments(p: argparse.ArgumentParser, warmup: int = 5, seconds: float = 20.0) -> None:
    g = p.add_argument_group("timing")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per backend (default: the cores this process may use)")
    g.add_argument("--warmup", type=non_negative_int, default=warmup,
                   help=f"untimed round-robin iterations before timing (default {warmup})")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=positive_int, default=None,
                        help="timed iterations (each runs every row once)")
    budget.add_argument("--seconds", type=positive_float, default=None,
                        help=f"time budget of the timed phase (default {seconds:g} s when --iters is not given)")
    p.set_defaults(_default_seconds=seconds)


def timing_budget(args) -> tuple[Optional[int], Optional[float]]:
    if args.iters is not None:
        return args.iters, None
    return None, args.seconds if args.seconds is not None else args._default_seconds


def default_threads(args) -> int:
    if getattr(args, "threads", None):
        return args.threads
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write every result (+ machine description and raw samples) as JSON")
    g.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="write one CSV line per row (machine columns repeated on each line)")
    g.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write PNG charts into DIR")
    g.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                   help="log the run to MLflow (optional tracking URI; default $MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db)")
    g.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    g.add_argument("--no-peak", action="store_true",
                   help="skip measuring the machine's peak FLOP/s (no fraction-of-peak column)")


def args_config(args) -> dict:
    """The command's arguments as the config record of its JSON (outputs and logging switches left out)."""
    return {k: v for k, v in vars(args).items() if k not in ("json", "csv", "plot", "verbose", "quiet", "command")}


def check_output_paths(args) -> None:
    """Fail before measuring if an output cannot be written (a directory given as a file, etc.)."""
    for name in ("json", "csv"):
        path = getattr(args, name, None)
        if path is not None and path.is_dir():
            raise ValueError(f"--{name} {path} is a directory; give a file name")
    if getattr(args, "plot", None) is not None and args.plot.exists() and not args.plot.is_dir():
        raise NotADirectoryError(f"--plot {args.plot} exists and is not a directory")


def write_outputs(report: dict, args, csv_columns: Optional[Sequence[str]] = None,
                  plots: Optional[callable] = None) -> list[Path]:
    """Write JSON / CSV / plots as requested, then log to MLflow if asked; returns the files written."""
    files: list[Path] = []
    if args.plot is not None and plots is not None:
        args.plot.mkdir(parents=True, exist_ok=True)
        try:
            files += plots(report, args.plot)
        except Exception as e:  # a chart must never lose the measurements
            log.error("plotting failed: %s: %s", type(e).__name__, e)
            report.setdefault("errors", []).append(f"plot: {type(e).__name__}: {e}")
    if args.csv is not None:
        files.append(rpt.write_csv(args.csv, report["rows"], report["machine"], csv_columns))
    if args.json is not None:
        files.append(rpt.write_json(args.json, report))
    if args.mlflow is not None:
        run_id = log_report(report, uri=args.mlflow or None, experiment=args.experiment, files=files)
        report["mlflow_run_id"] = run_id
        if args.json is not None:  # keep the run id with the results
            rpt.write_json(args.json, report)
    for f in files:
        print(f"wrote {f}")
    return files

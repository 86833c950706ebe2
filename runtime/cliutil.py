"""Shared CLI plumbing: logging set-up and the error policy (a clear message and a non-zero exit, no traceback)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from .choices import unknown_message
from .contract.errors import InfantinoError

log = logging.getLogger("infantino")

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_subcommands(prog: str, description: str, modules: Sequence[str], package: str,
                    argv: Sequence[str] | None = None, default: str | None = None) -> int:
    """Build an argparse CLI from subcommand modules (each has HELP, add_arguments(p), run(args) -> int) and run it.

    `default`: the subcommand meant when the arguments start with an option (`infantino-compile --model ...`).
    User errors (InfantinoError, ValueError, FileNotFoundError) print `prog: error: ...` and exit 2.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    runners: dict[str, Callable] = {}
    argv = list(sys.argv[1:] if argv is None else argv)
    if default and argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, default)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if argv and not argv[0].startswith("-") and argv[0] not in modules:
        print(f"{prog}: error: {unknown_message('command', argv[0], modules)}", file=sys.stderr)
        return EXIT_USER_ERROR
    for name in modules:
        mod = importlib.import_module(f"{package}.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        # Only the chosen subcommand's options are built: some pull in heavy modules for their defaults.
        if chosen is None or chosen == name or chosen not in modules:
            mod.add_arguments(p)
        runners[name] = mod.run
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    return guarded(prog, runners[args.command], args)


def guarded(prog: str, fn: Callable, *args) -> int:
    """Call fn(*args); turn user errors into one line on stderr and an exit code."""
    try:
        rc = fn(*args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (InfantinoError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR

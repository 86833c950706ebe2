"""`infantino-train`: synthetic data, extractor training, online head, registry and the update service."""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

from infantino.runtime.cliutil import run_subcommands

# One module per subcommand in infantino.trainer.commands (HELP, add_arguments, run).
SUBCOMMANDS = ["synth", "fit", "promote", "partial", "predict", "serve", "rollout"]


def main(argv=None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    available = [s for s in SUBCOMMANDS if _exists(s)]
    return run_subcommands("infantino-train", __doc__.strip(), available, "infantino.trainer.commands", argv)


def _exists(name: str) -> bool:
    return find_spec(f"infantino.trainer.commands.{name}") is not None


if __name__ == "__main__":
    sys.exit(main())

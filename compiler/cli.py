"""`infantino-compile`: compile an extractor + head into a signed bundle for a target; `keygen`, `verify`, `formats`.

    infantino-compile --model models:/infantino-extractor@champion --target x64 --key keys/signing.key --out bundle
    infantino-compile keygen --out keys/
    infantino-compile verify bundle --pub keys/signing.pub
    infantino-compile formats            # the targets and formats tables

The compile is the default action (`infantino-compile compile ...` works too). Unknown targets, formats,
precisions or per-format arguments fail before any work, naming the valid choices and the closest match.
Exit codes: 0 ok, 1 the parity gate failed, 2 bad input (message on stderr).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from infantino.runtime.cliutil import run_subcommands

PROG = "infantino-compile"
# One module per subcommand in infantino.compiler.commands (HELP, add_arguments, run), as the other CLIs.
SUBCOMMANDS = ["compile", "keygen", "verify", "formats"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return run_subcommands(PROG, __doc__.strip(), SUBCOMMANDS, "infantino.compiler.commands", argv,
                           default="compile")


if __name__ == "__main__":
    sys.exit(main())

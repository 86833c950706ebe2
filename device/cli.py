"""`infantino-device`: run the camera daemon, label a recent frame, roll back the head, show the status."""

from __future__ import annotations

import sys

from infantino.runtime.cliutil import run_subcommands

# One module per subcommand in infantino.device.commands (HELP, add_arguments, run).
SUBCOMMANDS = ["run", "label", "rollback", "status"]


def main(argv=None) -> int:
    return run_subcommands("infantino-device", __doc__.strip(), SUBCOMMANDS, "infantino.device.commands", argv)


if __name__ == "__main__":
    sys.exit(main())

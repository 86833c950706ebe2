"""Subcommands of `infantino-device` (each module: HELP, add_arguments(parser), run(args) -> int)."""

"""Subcommands of `infantino-bench`: one module each (HELP, add_arguments(parser), run(args) -> int)."""

"""infantino-compile subcommands: one module each (HELP, add_arguments(p), run(args)); compile is the default."""

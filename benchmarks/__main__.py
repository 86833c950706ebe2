"""`python -m infantino.benchmarks` = `infantino-bench`."""

import sys

from .cli import main

sys.exit(main())

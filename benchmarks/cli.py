"""`infantino-bench`: measure the extractor per backend (models), the frame path (pipeline), whole frames against the
`fer` package (frames), online learning (online), face detectors on composited real faces (detect), ...;
`compare A.json B.json` prints the ratio B/A of every metric of two runs.

Every comparison is taken in one interleaved run so that load from other processes hits all rows alike;
every --json result carries the machine description (CPU, cores, Python, library versions, load average) so
hosts can be compared. See docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

# Before torch/onnxruntime load: idle OpenMP threads sleep instead of spinning, so backends sharing this
# process (and other processes sharing the machine) do not steal each other's cores (MACHINE-FACTS).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from infantino.runtime.cliutil import run_subcommands  # noqa: E402

SUBCOMMANDS = ["models", "pipeline", "frames", "online", "realfaces", "detect", "attacks", "fleet", "rollout", "workers",
               "web", "compare"]


def main(argv=None) -> int:
    available = [s for s in SUBCOMMANDS if _exists(s)]
    return run_subcommands("infantino-bench", __doc__.strip(), available, "infantino.benchmarks.commands", argv)


def _exists(name: str) -> bool:
    return find_spec(f"infantino.benchmarks.commands.{name}") is not None


if __name__ == "__main__":
    sys.exit(main())

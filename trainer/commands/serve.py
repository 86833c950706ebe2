"""Run the online-learning update service: learn from the fleet's labelled samples (MQTT), publish signed
head deltas and the retained full head at most every `min_interval_ms`, record head versions in MLflow.
Stops cleanly on SIGTERM/SIGINT (publishes what it learned, persists, acknowledges)."""

from __future__ import annotations

import argparse
import signal

from infantino.runtime.cliutil import guarded, setup_logging
from infantino.runtime.contract.signing import key_id
from infantino.runtime.configfile import ConfigError, short_error
from infantino.trainer.service import UpdateService, WorkersConfig, load_service_config

HELP = "serve online head updates to a fleet over MQTT"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="trainer.yaml (see examples/trainer.yaml)")
    p.add_argument("--worker-id", help="this worker's name when several serve one state_dir (default: "
                   "workers.worker_id, else host-pid-random)")
    p.add_argument("--check", action="store_true", help="load and check the config, signing key, bundles, head "
                   "states and saved fleet state, then exit, writing nothing")


def run(args) -> int:
    cfg = load_service_config(args.config)
    if getattr(args, "worker_id", None):
        try:
            cfg.workers = WorkersConfig(**{**cfg.workers.model_dump(), "worker_id": args.worker_id})
        except ValueError as e:
            raise ConfigError(f"--worker-id: {short_error(e)}") from None
    svc = UpdateService(cfg, read_only=args.check)
    if args.check:
        print(f"signing key {cfg.signing_key} (fingerprint {key_id(svc.signing_key.public_key())[:16]}…)")
        for name, w in svc.fleets.items():
            print(f"fleet {name}: extractor {w.extractor_id[:12]}…, published head v{w.state.published.version}, "
                  f"{w.state.learned} samples learned, state in {w.state.dir}")
        print(f"broker {cfg.broker.describe()}; config OK")
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: svc.request_stop())
    return svc.run()


def main(argv=None) -> int:
    """`python -m infantino.trainer.commands.serve --config trainer.yaml` (same as `infantino-train serve`),
    without importing the other subcommands (a lighter process for a long-running service)."""
    p = argparse.ArgumentParser(prog="infantino-train serve", description=__doc__.strip())
    add_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    args = p.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    return guarded("infantino-train serve", run, args)


if __name__ == "__main__":
    raise SystemExit(main())

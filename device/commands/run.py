"""Run the device daemon: camera -> face -> extractor -> head, predictions and status over MQTT, signed OTA head
updates, labelled samples. Stops cleanly on SIGTERM/SIGINT (publishes an offline status)."""

from __future__ import annotations

import signal

from infantino.device.config import load_device_config
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.runtime.bundle import load_bundle
from infantino.runtime.pipeline import Pipeline
from infantino.runtime.sources import open_source, source_kind

HELP = "run the camera daemon"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="device.yaml (see examples/device.yaml)")
    p.add_argument("--check", action="store_true", help="validate the config and the bundle, then exit")


def run(args) -> int:
    cfg = load_device_config(args.config)
    bundle = load_bundle(cfg.bundle, public_key=cfg.public_key)
    facts = BundleFacts.from_bundle(bundle)
    if args.check:
        print(f"config OK: device {cfg.device_id} in fleet {cfg.fleet}, bundle {facts.bundle_id}, "
              f"broker {cfg.broker.describe()}, state in {cfg.state_dir}")
        return 0
    pipe = Pipeline(bundle, backend=cfg.backend, face=cfg.face, threads=cfg.threads)
    options = {"fps": cfg.camera.fps} if cfg.camera.fps and _is_live(cfg.camera.source) else {}
    daemon = DeviceDaemon(cfg, pipe, facts, source_factory=lambda: open_source(cfg.camera.source, **options))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.request_stop())
    try:
        return daemon.run()
    finally:
        close = getattr(pipe, "close", None)
        if callable(close):
            close()


def _is_live(spec) -> bool:
    return source_kind(spec) not in ("file", "folder", "image")

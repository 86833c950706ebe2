"""Roll the head back to the previous one. By default the running daemon does it (and swaps at once); with
--local the state directory is changed directly (only while the daemon is stopped). The version rolled back
from, and older ones, are refused afterwards; a newer update is accepted again."""

from __future__ import annotations

import json

from infantino.device.config import load_device_config
from infantino.device.head_store import HeadStore
from infantino.device.remote import send_command
from infantino.runtime.bundle import load_bundle

HELP = "roll back to the previous head"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="the device's device.yaml")
    p.add_argument("--local", action="store_true", help="edit the state directory directly (daemon stopped)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon's answer")


def run(args) -> int:
    if args.local:
        cfg = load_device_config(args.config)
        bundle = load_bundle(cfg.bundle, public_key=cfg.public_key)
        with HeadStore(cfg.state_dir) as store:
            before = store.load(bundle.head).head
            good = store.rollback()
        print(f"rolled back from head v{before.version} to v{good.version} in {cfg.state_dir}")
        return 0
    reply = send_command(args.config, {"command": "rollback"}, timeout=args.timeout)
    print(json.dumps(reply, indent=2))
    return 0

"""Run the device daemon: camera -> face -> extractor -> head, predictions and status over MQTT, signed OTA head
updates, labelled samples. Stops cleanly on SIGTERM/SIGINT (publishes an offline status)."""

from __future__ import annotations

import os
import signal
import socket
import threading

import numpy as np

from infantino.device.config import load_device_config
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.device.head_store import HeadStore
from infantino.runtime.bundle import load_bundle
from infantino.runtime.pipeline import Pipeline
from infantino.runtime.sources import open_source, source_kind

HELP = "run the camera daemon"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="device.yaml (see examples/device.yaml)")
    p.add_argument("--check", action="store_true", help="check everything the daemon needs (config, bundle, update "
                   "keys, backend, stored head, state dir, camera, broker address) and exit, writing nothing; "
                   "exit 1 if a check fails")
    p.add_argument("--skip-camera", action="store_true", help="with --check: do not open the camera (the daemon "
                   "waits for a camera that is not there yet; systemd's ExecStartPre uses this)")


def run(args) -> int:
    cfg = load_device_config(args.config)
    bundle = load_bundle(cfg.bundle, public_key=cfg.public_key)
    facts = BundleFacts.from_bundle(bundle)
    if args.check:
        return check(cfg, bundle, facts, skip_camera=args.skip_camera)

    pipe = Pipeline(bundle, backend=cfg.backend, face=cfg.face, threads=cfg.threads)
    options = {"fps": cfg.camera.fps} if cfg.camera.fps and _is_live(cfg.camera.source) else {}
    daemon = DeviceDaemon(cfg, pipe, facts, source_factory=lambda: open_source(cfg.camera.source, reconnect=False,
                                                                                   **options))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.request_stop())
    try:
        return run_with_web(daemon, cfg)
    finally:
        close = getattr(pipe, "close", None)
        if callable(close):
            close()


def run_with_web(daemon: DeviceDaemon, cfg) -> int:
    """daemon.run(), plus the web page and API on their own thread when web.enabled (stopped before the daemon)."""
    if not cfg.web.enabled:
        return daemon.run()
    # FastAPI/uvicorn load only when the web app is on (they add ~0.5 s to the start).
    from infantino.device.web.server import start_web
    from infantino.device.web.view import DaemonView

    daemon.start()
    web = None
    try:
        web = start_web(cfg.web, DaemonView(daemon))
        daemon.supervise()
    finally:
        if web is not None:
            web.stop()
        daemon.stop()
    return 0


def check(cfg, bundle, facts, skip_camera: bool = False) -> int:
    """Every check the daemon's start depends on, one line each; nothing is written. 0 = all passed, 1 = not."""
    results: list[tuple[str, bool, str]] = []

    def item(name: str, fn) -> None:
        try:
            results.append((name, True, fn()))
        except Exception as e:  # each check reports its own failure; the others still run
            results.append((name, False, f"{type(e).__name__}: {e}" if not str(e).startswith(type(e).__name__)
                            else str(e)))

    def backend() -> str:
        with Pipeline(bundle, backend=cfg.backend, face=cfg.face, threads=cfg.threads) as pipe:
            pipe.predict(np.zeros((240, 320, 3), np.uint8))
            return f"{pipe.backend.name} runs the bundle's extractor"

    def keys() -> str:
        k = cfg.update_keys()
        return f"{len(k.keys)} trusted update key(s): " + ", ".join(kid[:16] for kid, _ in k.keys)

    def stored() -> str:
        if not cfg.state_dir.exists():
            return f"no state yet (starts with the bundle's head v{facts.head.version})"
        head = HeadStore(cfg.state_dir, read_only=True).load_current(facts.extractor_id)
        return f"stored head v{head.version} (bundle's v{facts.head.version})"

    def state_dir() -> str:
        d = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"{d} is not writable by this user")
        return f"{cfg.state_dir} writable"

    def camera() -> str:
        got: list = []

        def read():
            src = open_source(cfg.camera.source, reconnect=False)
            try:
                got.append(next(iter(src), None))
            except Exception as e:  # reported below
                got.append(e)
            finally:
                src.close()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(cfg.camera.stall_timeout_s)
        if not got:
            raise TimeoutError(f"no frame from {cfg.camera.source!r} within {cfg.camera.stall_timeout_s:g} s")
        if isinstance(got[0], Exception):
            raise got[0]
        if got[0] is None:
            raise RuntimeError(f"{cfg.camera.source!r} gave no frame")
        h, w = got[0].shape[:2]
        return f"{cfg.camera.source!r} gives {w}x{h} frames"

    results.append(("config", True, f"device {cfg.device_id} in fleet {cfg.fleet}, broker {cfg.broker.describe()}"))
    results.append(("bundle", True, f"{facts.bundle_id} verified (extractor {facts.extractor_id[:12]}…)"))
    item("update keys", keys)
    item("backend", backend)
    item("stored head", stored)
    item("state dir", state_dir)
    item("web", lambda: check_web(cfg.web))
    if skip_camera:
        results.append(("camera", True, "not opened (--skip-camera)"))
    else:
        item("camera", camera)
    for name, ok, text in results:
        print(f"{name:12s} {'ok    ' if ok else 'FAILED'} {text}")
    return 0 if all(ok for _, ok, _ in results) else 1


def check_web(web) -> str:
    """The web app's tokens are readable and its address can be listened on (the socket is closed again)."""
    if not web.enabled:
        return "disabled"
    token, operator = web.tokens()
    with socket.socket(socket.AF_INET6 if ":" in web.bind else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((web.bind, web.port))
    auth = "no token (loopback only)" if not (token or operator) else \
        "token" + (" + operator token" if operator else " (no operator token: rollback disabled)")
    return f"http://{web.bind}:{web.port}, {auth}"


def _is_live(spec) -> bool:
    return source_kind(spec) not in ("file", "folder", "image")

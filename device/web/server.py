"""The device's web server: its app and tokens on runtime.webserver.WebServer (uvicorn in a thread of its own,
so the daemon's threads never wait for it)."""

from __future__ import annotations

import logging

from infantino.runtime.webserver import WebServer, WebServerError

from ..config import WebConfig, is_loopback
from .app import create_app
from .view import DeviceView

log = logging.getLogger(__name__)


def start_web(cfg: WebConfig, view: DeviceView) -> WebServer:
    """The device's web app on cfg.bind:cfg.port, with its tokens; WebServerError if it cannot listen."""
    try:
        token, operator_token = cfg.tokens()
    except (OSError, ValueError) as e:
        raise WebServerError(f"web: {e}") from None
    if token is None and operator_token is None:
        if not is_loopback(cfg.bind):
            raise WebServerError(f"web: bind {cfg.bind!r} is not loopback and no token is configured")
        log.warning("web: no token configured: anyone who can reach %s on this machine can use the page and API",
                    cfg.bind)
    app = create_app(view, cfg, token, operator_token)
    return WebServer(app, cfg.bind, cfg.port).start()


__all__ = ["WebServer", "WebServerError", "start_web"]

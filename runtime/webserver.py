"""uvicorn in a thread of its own with its own event loop, for the device's page and the update service's fleet
page: the threads that do the work never wait for a browser.

The listening socket is bound here (not by uvicorn) so that a port in use or a bad address is a clear error at
start, and port 0 (any free port, for tests) reports the port it got.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from .contract.errors import InfantinoError

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

log = logging.getLogger(__name__)


class WebServerError(InfantinoError):
    """The web server could not start (address in use, bad bind address, ...)."""


class WebServer:
    """Serves an ASGI app on host:port from a daemon thread; start() returns once it accepts connections."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080, name: str = "infantino-web"):
        self.app = app
        self.name = name
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return bool(self._server is not None and self._server.started)

    def start(self, timeout: float = 10.0) -> "WebServer":
        import uvicorn  # optional: in the device and train extras, not the base install

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise WebServerError(f"web: cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        sock.listen(64)
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                limit_concurrency=64, timeout_keep_alive=5, proxy_headers=True)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise WebServerError(f"web: the server on {self.url} did not start")
            time.sleep(0.02)
        log.info("web: serving the page and API on %s", self.url)
        return self

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException:  # the thread must not die silently; start() reports it
            log.exception("web: the server stopped with an error")

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

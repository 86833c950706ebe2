"""A loopback TCP proxy whose link can be cut and restored, to take an uplink down without killing a broker.

`cut()` resets every open connection (RST, both ends) and then resets each new one at once; `restore()` forwards
new connections again. Both ends see the link drop as a network failure would show it, not a clean close.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

log = logging.getLogger(__name__)

_LINGER_0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


def _reset(sock: socket.socket) -> None:
    """Close with RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    except OSError:
        pass
    sock.close()


class _Pair:
    """One forwarded connection: the accepted socket, the socket to the target, and their two pump threads."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.threads: list[threading.Thread] = []
        self.aborting = False
        self.lock = threading.Lock()
        self.closed = False

    def close(self, reset: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            if reset:
                _reset(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


class NetCut:
    """Forwards `listen_host:listen_port` (0 = a free port) to `target_host:target_port`; counts connections."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0):
        self.target = (target_host, target_port)
        self._server = socket.create_server((listen_host, listen_port))
        self.host, self.port = self._server.getsockname()[:2]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._is_cut = False
        self._closed = False
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.bytes = {"up": 0, "down": 0}
        self._thread = threading.Thread(target=self._accept_loop, name=f"netcut-{self.port}", daemon=True)

    def start(self) -> "NetCut":
        self._thread.start()
        log.info("netcut %s:%d -> %s:%d", self.host, self.port, *self.target)
        return self

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> int:
        """Reset every forwarded connection and refuse new ones until `restore()`; returns how many were reset."""
        with self._lock:
            self._is_cut = True
            self.cuts += 1
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            p.aborting = True
            for s in (p.client, p.upstream):
                try:
                    s.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv(); sends nothing
                except OSError:
                    pass
            for t in p.threads:
                t.join(timeout=5)
            p.close(reset=True)
        log.info("netcut %d: cut (%d connections reset)", self.port, len(pairs))
        return len(pairs)

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._is_cut = False
        log.info("netcut %d: restored", self.port)

    def close(self) -> None:
        self._closed = True
        self.cut()
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "NetCut":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._is_cut or self._closed:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError as e:
                log.warning("netcut %d: target %s:%d unreachable: %s", self.port, *self.target, e)
                _reset(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            pair.threads = [threading.Thread(target=self._pump, args=(pair, src, dst, way), daemon=True,
                                             name=f"netcut-{self.port}-{way}")
                            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down"))]
            with self._lock:
                if self._is_cut:
                    self.refused += 1
                    pair.close(reset=True)
                    continue
                self._pairs.append(pair)
                self.accepted += 1
            for t in pair.threads:
                t.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or pair.aborting:
                    break
                dst.sendall(data)
                with self._lock:
                    self.bytes[way] += len(data)
        except OSError:
            pass
        if pair.aborting:
            return  # cut() resets both sockets
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        pair.close(reset=False)  # one end closed: close the other

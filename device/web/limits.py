"""Request body limits enforced before the body is read: a declared or streamed body over the limit gets 413."""

from __future__ import annotations

import json


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: at most `limits[path]` bytes of request body (else `default`) per request."""

    def __init__(self, app, default: int, limits: dict[str, int] | None = None):
        self.app = app
        self.default = default
        self.limits = limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    return await _send_413(send, limit)
            except ValueError:
                return await _send_json(send, 400, "bad Content-Length header")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send, limit)


async def _send_413(send, limit: int) -> None:
    await _send_json(send, 413, f"request body exceeds the {limit}-byte limit")


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

"""Request body limits, enforced before a handler reads the body.

A pure ASGI middleware: a declared ``Content-Length`` above the limit answers 413 at once; a
chunked body is counted as it arrives and cut off at the limit. ``POST /v2/usage`` (up to
1,000 events) has its own, larger limit.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streambill.errors import StreambillError

USAGE_PATH = "/v2/usage"


class BodyTooLarge(StreambillError):
    """Raised from ``receive`` when a chunked body passes the limit; the error handlers turn
    it into the usual 413 body."""

    code = "payload_too_large"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, default_bytes: int, usage_bytes: int) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.usage_bytes = usage_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.usage_bytes if scope["path"] == USAGE_PATH else self.default_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds {limit} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    body: dict[str, Any] = {
        "error": {"code": "payload_too_large", "message": f"request body exceeds {limit} bytes"}
    }
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})

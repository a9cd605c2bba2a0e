"""WebSocket ``/v2/stream``: live balances, alerts and commissions (CONTRACT section 5).

Protocol (docs/live-streams.md):

1. The ``Origin`` header, when present (browsers always send it), must be in the allow-list,
   or the handshake is refused (HTTP 403; close code 1008 in ASGI terms). Non-browser
   clients send none and are let through: the token is what authenticates.
2. The first message is ``{"token": "<key or session token>"}`` within ``auth_timeout_s``;
   otherwise the socket is closed with 4401. The reply is
   ``{"type": "welcome", "role": ..., "tenant_id": ..., "channels": [...]}``.
3. ``{"subscribe": [...]}`` and ``{"unsubscribe": [...]}`` answer
   ``{"type": "subscribed", "channels": [...]}`` (the channels now active), or
   ``{"type": "error", "error": {"code": ..., "message": ...}}``; the socket stays open.
4. Every ``revalidate_s`` the token is checked again; a revoked or expired one (or one that
   now names another principal) closes the socket with 4401.

Collaborators come from ``app.state.stream``, a :class:`StreamContext`. Per socket there are
three tasks: the one sender (:func:`streambill.api.live.pump`, which also performs every
close, so no two coroutines write to the socket), the reader of client requests, and the
revalidation timer. All three end with the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from streambill.api.deps import SESSION_COOKIE
from streambill.api.errors import error_body
from streambill.api.live import CHANNELS, CLOSED, LiveHub, Subscriber, pump
from streambill.api.origins import normalize_origin, origin_allowed
from streambill.control.principal import Principal

__all__ = ["StreamContext", "origin_allowed", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["stream"])

CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_UNAUTHORIZED: Final = 4401
# The closing errors of a socket whose client is gone (Starlette, uvicorn, the transport).
_GONE: Final = (WebSocketDisconnect, RuntimeError, OSError)


@dataclass(frozen=True, slots=True)
class StreamContext:
    """What ``/v2/stream`` needs, set as ``app.state.stream`` by the app's lifespan.

    ``authenticate`` maps a key or session token to its principal, or None when the token
    is unknown, revoked or expired. ``allowed_origins`` are browser origins
    (``https://app.example.com``), compared case-insensitively without a trailing slash.
    ``max_pending_customers`` bounds each socket's coalesced balances (close 1013 beyond).
    ``close_grace_s`` is how long a socket asked to close may take to write its close frame
    before it is cut off (a client that stopped reading never takes it).
    """

    hub: LiveHub
    authenticate: Callable[[str], Awaitable[Principal | None]]
    allowed_origins: frozenset[str]
    revalidate_s: float = 20.0
    auth_timeout_s: float = 10.0
    max_pending_customers: int = 10_000
    max_request_chars: int = 4_096
    close_grace_s: float = 2.0

    def __post_init__(self) -> None:
        if min(self.revalidate_s, self.auth_timeout_s, self.close_grace_s) <= 0:
            raise ValueError("revalidate_s, auth_timeout_s and close_grace_s must be positive")
        normalized = frozenset(normalize_origin(origin) for origin in self.allowed_origins)
        object.__setattr__(self, "allowed_origins", normalized)


@router.websocket("/v2/stream")
async def stream(websocket: WebSocket) -> None:
    context: StreamContext = websocket.app.state.stream
    headers = websocket.headers
    if not origin_allowed(headers.get("origin"), context.allowed_origins, headers.get("host")):
        # Before accept: a cross-site page must not even learn whether a token works.
        CLOSED.labels("origin").inc()
        await websocket.close(code=CLOSE_POLICY, reason="origin not allowed")
        return
    await websocket.accept()
    authenticated = await _authenticate(websocket, context)
    if authenticated is None:
        return
    token, principal = authenticated
    subscriber = context.hub.subscribe(
        principal, max_pending_customers=context.max_pending_customers
    )
    logger.info("live socket opened", extra={"principal": principal.label()})
    try:
        subscriber.send_control(
            {
                "type": "welcome",
                "role": principal.role,
                "tenant_id": principal.tenant_id,
                "channels": sorted(CHANNELS),
            }
        )
        await _serve(websocket, context, subscriber, token)
    finally:
        context.hub.unsubscribe(subscriber)
        subscriber.finish()
        logger.info(
            "live socket closed",
            extra={"principal": principal.label(), "code": subscriber.close_code},
        )


async def _authenticate(
    websocket: WebSocket, context: StreamContext
) -> tuple[str, Principal] | None:
    """The first message's token and its principal; None once the socket is closed."""
    try:
        async with asyncio.timeout(context.auth_timeout_s):
            text = await _receive_text(websocket)
    except TimeoutError:
        CLOSED.labels("unauthorized").inc()
        await _close(websocket, CLOSE_UNAUTHORIZED, "unauthorized")
        return None
    if text is None:
        return None
    token = _token_of(text, context.max_request_chars)
    if token is None and _wants_session_cookie(text):
        # A dashboard page cannot read its HttpOnly cookie; the handshake carried it, and the
        # Origin check above made sure the page is this api's own.
        token = websocket.cookies.get(SESSION_COOKIE)
    principal = None
    if token is not None:
        try:
            principal = await context.authenticate(token)
        except Exception:
            logger.exception("live socket: authentication failed")
            await _close(websocket, CLOSE_INTERNAL, "authentication unavailable")
            return None
    if token is None or principal is None:
        CLOSED.labels("unauthorized").inc()
        await _close(websocket, CLOSE_UNAUTHORIZED, "unauthorized")
        return None
    return token, principal


def _token_of(text: str, max_chars: int) -> str | None:
    if len(text) > max_chars:
        return None
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    token = request.get("token") if isinstance(request, dict) else None
    return token if isinstance(token, str) and token else None


def _wants_session_cookie(text: str) -> bool:
    """``{"session": "cookie"}``: authenticate with the handshake's session cookie.

    >>> _wants_session_cookie('{"session": "cookie"}'), _wants_session_cookie('{"token": 1}')
    (True, False)
    """
    if len(text) > 64:
        return False
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(request, dict) and request.get("session") == "cookie"


async def _serve(
    websocket: WebSocket, context: StreamContext, subscriber: Subscriber, token: str
) -> None:
    async def close(code: int, reason: str) -> None:
        await _close(websocket, code, reason)

    sender = asyncio.create_task(pump(subscriber, websocket.send_text, close), name="live-send")
    reader = asyncio.create_task(_read_requests(websocket, context, subscriber), name="live-read")
    timer = asyncio.create_task(_revalidate(context, subscriber, token), name="live-revalidate")
    closing = asyncio.create_task(subscriber.wait_close_requested(), name="live-closing")
    tasks = (sender, reader, timer, closing)
    try:
        await asyncio.wait({sender, reader, closing}, return_when=asyncio.FIRST_COMPLETED)
        if subscriber.close_code is not None and not sender.done():
            # The sender writes the close frame once it is free; a stalled one is cut off.
            await asyncio.wait({sender}, timeout=context.close_grace_s)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, _GONE):
            logger.error("live socket task failed", exc_info=result)


async def _read_requests(
    websocket: WebSocket, context: StreamContext, subscriber: Subscriber
) -> None:
    """Answer subscribe/unsubscribe until the client leaves. Replies go through the
    subscriber's queue: only the sender writes to the socket."""
    while True:
        text = await _receive_text(websocket)
        if text is None:
            return
        reply = _answer(subscriber, text, context.max_request_chars)
        if not subscriber.send_control(reply):
            # The client sends requests but does not read the replies.
            CLOSED.labels("policy").inc()
            subscriber.request_close(CLOSE_POLICY, "too many unanswered requests")
            return


def _answer(subscriber: Subscriber, text: str, max_chars: int) -> dict[str, Any]:
    """Apply one client request to the subscriber; the reply to send."""
    if len(text) > max_chars:
        return _error("invalid_request", f"requests are at most {max_chars} characters")
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _error("invalid_json", "a request is one JSON object")
    if not isinstance(request, dict):
        request = {}
    actions = [key for key in ("subscribe", "unsubscribe") if key in request]
    if len(actions) != 1:
        return _error("invalid_request", 'expected {"subscribe": [...]} or {"unsubscribe": [...]}')
    channels = request[actions[0]]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        return _error("invalid_request", f"{actions[0]}: a list of channel names")
    unknown = sorted(set(channels) - CHANNELS)
    if unknown:
        known = ", ".join(sorted(CHANNELS))
        return _error("invalid_request", f"unknown channel(s) {unknown}; channels: {known}")
    if actions[0] == "subscribe":
        subscriber.subscribe(channels)
    else:
        subscriber.unsubscribe(channels)
    return {"type": "subscribed", "channels": sorted(subscriber.channels)}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", **error_body(code, message)}


async def _revalidate(context: StreamContext, subscriber: Subscriber, token: str) -> None:
    """Re-check the token every ``revalidate_s``: a revoked key or session (or one that now
    names another principal) closes the socket. A check that fails (the control database
    is down) is tolerated for two periods, then the socket is closed with 1011: a socket
    that cannot be re-checked cannot be kept within the revocation promise."""
    last_ok_s = time.monotonic()
    while True:
        await asyncio.sleep(context.revalidate_s)
        try:
            async with asyncio.timeout(context.revalidate_s):
                current = await context.authenticate(token)
        except Exception:
            logger.warning(
                "live socket: revalidation failed",
                extra={"principal": subscriber.principal.label()},
                exc_info=True,
            )
            if time.monotonic() - last_ok_s >= 2 * context.revalidate_s:
                CLOSED.labels("unverifiable").inc()
                subscriber.request_close(CLOSE_INTERNAL, "credential cannot be checked")
                return
            continue
        if current != subscriber.principal:
            CLOSED.labels("revoked").inc()
            subscriber.request_close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        last_ok_s = time.monotonic()


async def _receive_text(websocket: WebSocket) -> str | None:
    """The next client message as text (a binary frame is decoded as UTF-8); None once the
    client has gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"").decode("utf-8", errors="replace")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(*_GONE):
        await websocket.close(code=code, reason=reason)

"""Request dependencies as ``Annotated`` aliases.

A request authenticates with ``Authorization: Bearer <API key or session token>`` or, from the
dashboards, with the session cookie. ``CurrentPrincipal`` resolves it (401 when missing or
invalid), applies the per-credential rate limit (429), and, for a write authenticated only by
the cookie, checks the ``Origin`` against the allow-list (a cross-site form cannot post).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.sink import ClickHouseSink
from streambill.api.ingest import UsageProducer
from streambill.api.live import LiveFeed, LiveHub
from streambill.api.origins import origin_allowed
from streambill.api.ratelimit import LoginGuard, RateLimiter
from streambill.control.outbox import OutboxRelay
from streambill.control.plane import ControlPlane
from streambill.control.principal import Principal
from streambill.errors import Forbidden, StreambillError, Unauthorized
from streambill.payments.gateway import StripeGateway
from streambill.payments.payer import Payments
from streambill.settings import Settings

SESSION_COOKIE = "streambill_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class ApiRuntime:
    """What the lifespan builds and the routes use."""

    settings: Settings
    clickhouse: AsyncClickHouse
    sink: ClickHouseSink
    control: ControlPlane
    producer: UsageProducer
    relay: OutboxRelay
    limiter: RateLimiter
    login_guard: LoginGuard
    hub: LiveHub
    feed: LiveFeed
    # None while STREAMBILL_STRIPE_API_KEY is unset: payment routes answer 503 unavailable.
    stripe: StripeGateway | None = None

    def payments(self) -> Payments:
        return Payments(
            self.control,
            self.stripe,
            self.settings.public_base_url,
            return_origins=self.settings.origins if self.settings.allowed_origins else frozenset(),
            dashboard_base_domain=self.settings.dashboard_base_domain,
        )

    async def close_credential(self, credential_id: str) -> None:
        """A key or session ended: forget it here and close the sockets it opened."""
        self.control.auth.forget(credential_id)
        await self.hub.close_principal(credential_id)


def get_runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise StreambillError("the api is starting", code="unavailable")
    return runtime


Runtime = Annotated[ApiRuntime, Depends(get_runtime)]


def bearer_token(request: Request) -> tuple[str | None, bool]:
    """The presented token and whether it came from the cookie."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <key>'")
        return token.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, True) if cookie else (None, False)


async def get_principal(request: Request, runtime: Runtime) -> Principal:
    token, from_cookie = bearer_token(request)
    if token is None:
        raise Unauthorized("missing bearer token")
    principal = await runtime.control.auth.authenticate(token)
    if principal is None:
        raise Unauthorized("invalid, revoked or expired credential")
    if from_cookie and request.method not in _SAFE_METHODS:
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if origin is None or not origin_allowed(origin, runtime.settings.origins, host):
            raise Forbidden("cookie-authenticated writes must come from an allowed origin")
    runtime.limiter.check(principal.credential_id)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise Forbidden("the platform admin only")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]

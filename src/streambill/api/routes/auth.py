"""Login and logout for the dashboards: a session token, also set as an HttpOnly cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from streambill.api.deps import SESSION_COOKIE, CurrentPrincipal, Runtime
from streambill.control import identity
from streambill.control.access import SESSION_LIFETIME
from streambill.control.schemas import LoginRequest, LoginResponse

router = APIRouter(prefix="/v2/auth", tags=["auth"])


class WhoAmI(BaseModel):
    role: str
    tenant_id: str | None
    tenant_kind: str | None
    user_id: str | None
    credential_id: str


@router.post("/login", response_model=LoginResponse)
async def login(
    body: LoginRequest, request: Request, response: Response, runtime: Runtime
) -> LoginResponse:
    """Exchange e-mail and password for a session (12 h). The token is in the body for API
    clients and in the ``streambill_session`` cookie (HttpOnly, SameSite=Lax) for pages."""
    client = request.client.host if request.client else "-"
    runtime.login_guard.check(client, body.email)
    result = await identity.login(runtime.control, body.email, body.password)
    set_session_cookie(response, result.token, secure=runtime.settings.session_cookie_secure)
    return result


def set_session_cookie(response: Response, token: str, *, secure: bool) -> None:
    """The session token as the pages' cookie: HttpOnly (no script reads it), host-only (each
    white-label host has its own), SameSite=Lax: sent on a top-level navigation from another
    site, so a customer coming back from Stripe Checkout is still signed in; never on another
    site's fetch, form post or frame. Writes are guarded by the Origin check besides."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )


@router.post("/logout", status_code=204)
async def logout(runtime: Runtime, principal: CurrentPrincipal) -> Response:
    """End this session (and close its WebSockets); the cookie is cleared."""
    await identity.logout(runtime.control, principal)
    await runtime.close_credential(principal.credential_id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=WhoAmI)
async def me(principal: CurrentPrincipal) -> WhoAmI:
    """Who the presented credential is."""
    return WhoAmI(
        role=principal.role,
        tenant_id=principal.tenant_id,
        tenant_kind=principal.tenant_kind,
        user_id=principal.user_id,
        credential_id=principal.credential_id,
    )

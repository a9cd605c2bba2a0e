"""The dashboards' routes: a login page per area, logout, and the three pages.

A page is a shell: the brand, the language, who is signed in and the area's messages, as a
JSON block the area's script reads (``static/js/<area>.js``). Who may open which area:

========== ================= =========================================================
area       signs in          sees
========== ================= =========================================================
/portal    customer users    their own balance, usage, top-ups, statements, settings
/reseller  reseller users    their customers, commissions, payouts, fraud alerts
/admin     admin users       every reseller, platform KPIs, dead letters, health
========== ================= =========================================================

On a white-label host (:mod:`.brand`) only the reseller's own users and its customers' users
may sign in; elsewhere they are refused with ``wrong_portal`` after the password was checked
(the caller knows the password; nothing is revealed). Pages answer with a strict Content
Security Policy: scripts and styles from this origin only, sockets to this origin.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from streambill.api.deps import SESSION_COOKIE, Runtime
from streambill.api.origins import origin_allowed
from streambill.api.routes.auth import set_session_cookie
from streambill.control import identity
from streambill.control.models import Tenant, User
from streambill.control.principal import Principal
from streambill.control.schemas import LoginRequest
from streambill.dashboards import vendor
from streambill.dashboards.brand import PLATFORM, Brand, BrandResolver, UnknownPortal
from streambill.dashboards.i18n import LANG_COOKIE, Lang, messages, pick
from streambill.errors import Forbidden, StreambillError

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
# area -> the user role that may open it
AREAS: Final = {"portal": "customer", "reseller": "reseller", "admin": "admin"}
LANG_COOKIE_MAX_AGE_S: Final = 365 * 24 * 3600
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https: http:; connect-src 'self'; font-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def mount(app: FastAPI) -> None:
    """Serve the pages and their static files from ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)


def _resolver(request: Request, runtime: Any) -> BrandResolver:
    resolver: BrandResolver | None = getattr(request.app.state, "brands", None)
    if resolver is None or resolver.control is not runtime.control:
        settings = runtime.settings
        hosts = {"127.0.0.1", "localhost", "[::1]", settings.api_host.lower()}
        hosts |= {
            h.strip().lower() for h in (settings.dashboard_platform_hosts or "").split(",") if h
        }
        if settings.public_url:
            hosts.add(settings.public_url.split("://", 1)[-1].split("/", 1)[0].split(":")[0])
        resolver = BrandResolver(
            runtime.control, settings.dashboard_base_domain.lower(), frozenset(hosts)
        )
        request.app.state.brands = resolver
    return resolver


async def _session(request: Request, runtime: Any) -> Principal | None:
    """The principal of the session cookie (pages accept no other credential)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    principal: Principal | None = await runtime.control.auth.authenticate(token)
    return principal if principal is not None and principal.user_id is not None else None


def _lang(request: Request, runtime: Any) -> Lang:
    return pick(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        runtime.settings.dashboard_language,
    )


def _render(request: Request, template: str, lang: Lang, context: dict[str, Any]) -> HTMLResponse:
    page = {"lang": lang, **context}
    body = _templates.get_template(template).render(
        page=page,
        t=page["messages"],
        brand=context["brand"],
        page_json=Markup(
            json.dumps(page, ensure_ascii=False, default=str)
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        ),
        charts=vendor.installed(),
    )
    response = HTMLResponse(body)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.query_params.get("lang") == lang:
        response.set_cookie(LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE_S, samesite="lax")
    return response


def _unknown_portal(request: Request, lang: Lang) -> HTMLResponse:
    t = messages("common", lang)
    body = _templates.get_template("unknown.html").render(
        t=t, brand=_brand_doc(PLATFORM), page={"lang": lang}, host=request.headers.get("host", "")
    )
    return HTMLResponse(
        body,
        status_code=404,
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _brand_for(
    request: Request, runtime: Any, principal: Principal | None
) -> tuple[Brand, bool]:
    """The brand to show and whether the host is a white-label one."""
    resolver = _resolver(request, runtime)
    host_brand = await resolver.for_host(request.headers.get("host"))
    if host_brand.reseller_id is not None:
        return host_brand, True
    if principal is not None and not principal.is_admin:
        return await resolver.for_tenant(principal.tenant_id), False
    return host_brand, False


def _belongs(brand: Brand, user: User, tenant: Tenant | None) -> bool:
    """Whether a user is one of a white-label portal's (the reseller's or its customers')."""
    if brand.reseller_id is None:
        return True
    if tenant is None:
        return False
    return brand.reseller_id in (tenant.id, tenant.parent_id)


def _brand_doc(brand: Brand) -> dict[str, Any]:
    return {**asdict(brand), "initials": brand.initials}


async def _session_belongs(runtime: Any, brand: Brand, principal: Principal) -> bool:
    if brand.reseller_id is None:
        return True
    async with runtime.control.sessions() as session:
        user = await session.get(User, principal.user_id)
        tenant = await session.get(Tenant, principal.tenant_id) if principal.tenant_id else None
    return user is not None and _belongs(brand, user, tenant)


def _login_target(area: str, lang: Lang) -> str:
    return f"/{area}/login?lang={lang}"


def _page_route(area: str) -> None:
    role = AREAS[area]

    async def login_page(request: Request, runtime: Runtime) -> Response:
        lang = _lang(request, runtime)
        try:
            brand, _ = await _brand_for(request, runtime, None)
        except UnknownPortal:
            return _unknown_portal(request, lang)
        principal = await _session(request, runtime)
        if (
            principal is not None
            and principal.role == role
            and await _session_belongs(runtime, brand, principal)
        ):
            return RedirectResponse(f"/{area}", status_code=303)
        context = {"area": area, "brand": _brand_doc(brand), "messages": messages("common", lang)}
        return _render(request, "login.html", lang, context)

    async def login(body: LoginRequest, request: Request, runtime: Runtime) -> Response:
        client = request.client.host if request.client else "-"
        runtime.login_guard.check(client, body.email)
        try:
            brand, _ = await _brand_for(request, runtime, None)
        except UnknownPortal as exc:
            raise StreambillError("no portal at this address", code="not_found") from exc

        def admit(user: User, tenant: Tenant | None) -> None:
            if user.role != role:
                raise Forbidden(f"this sign-in is for {role} accounts", code="wrong_portal")
            if not _belongs(brand, user, tenant):
                raise Forbidden("this account does not belong to this portal", code="wrong_portal")

        result = await identity.login(runtime.control, body.email, body.password, admit)
        response = JSONResponse({"redirect": f"/{area}"})
        set_session_cookie(response, result.token, secure=runtime.settings.session_cookie_secure)
        return response

    async def page(request: Request, runtime: Runtime) -> Response:
        lang = _lang(request, runtime)
        principal = await _session(request, runtime)
        if principal is None or principal.role != role:
            return RedirectResponse(_login_target(area, lang), status_code=303)
        try:
            brand, white_label = await _brand_for(request, runtime, principal)
        except UnknownPortal:
            return _unknown_portal(request, lang)
        async with runtime.control.sessions() as session:
            user = await session.get(User, principal.user_id)
            tenant = await session.get(Tenant, principal.tenant_id) if principal.tenant_id else None
        if user is None or (white_label and not _belongs(brand, user, tenant)):
            # a session from elsewhere (another portal, or an account that moved): sign out
            # here, or the login page would send it straight back
            refused = RedirectResponse(_login_target(area, lang), status_code=303)
            refused.delete_cookie(SESSION_COOKIE, path="/")
            return refused
        context = {
            "area": area,
            "brand": _brand_doc(brand),
            "messages": messages(area, lang),
            "base_domain": runtime.settings.dashboard_base_domain,
            "me": {
                "role": principal.role,
                "user_id": user.id,
                "email": user.email,
                "name": user.name,
                "tenant_id": principal.tenant_id,
                "tenant_name": tenant.name if tenant else None,
                "currency": tenant.currency if tenant else None,
                "timezone": tenant.timezone if tenant else None,
            },
        }
        return _render(request, f"{area}.html", lang, context)

    router.add_api_route(f"/{area}/login", login_page, methods=["GET"])
    router.add_api_route(f"/{area}/login", login, methods=["POST"])
    router.add_api_route(f"/{area}", page, methods=["GET"])


for _area in AREAS:
    _page_route(_area)


@router.post("/logout")
async def logout(request: Request, runtime: Runtime) -> Response:
    """End the page's session; answers where to go next (the area's login page)."""
    area = request.query_params.get("area", "portal")
    lang = _lang(request, runtime)
    target = _login_target(area if area in AREAS else "portal", lang)
    origin = request.headers.get("origin")
    if origin is None or not origin_allowed(
        origin, runtime.settings.origins, request.headers.get("host")
    ):
        raise Forbidden("cookie-authenticated writes must come from an allowed origin")
    principal = await _session(request, runtime)
    if principal is not None:
        await identity.logout(runtime.control, principal)
        await runtime.close_credential(principal.credential_id)
    response = JSONResponse({"redirect": target})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

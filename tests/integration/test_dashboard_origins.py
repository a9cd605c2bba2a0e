"""The browser-facing guards of the dashboards, without a browser: cookie-authenticated
writes and the live socket accept only the api's own or an allowed origin; white-label hosts
admit only their reseller's users; resellers cannot take the platform's host names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from apiworld import Api, World, build_world, running_api

pytestmark = pytest.mark.integration

PASSWORD = "origins-test-password"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, World, dict[str, str]]]:
    with running_api(tmp_path_factory.mktemp("origins")) as api:
        w = build_world(api)
        o = w.objects
        api.ok("PATCH", f"/v2/resellers/{o['res_a']}", {"slug": "alpha"})
        api.ok("PATCH", f"/v2/resellers/{o['res_b']}", {"slug": "beta"})
        cookies = {}
        for tenant in ("cus_a", "cus_b"):
            email = f"owner-{tenant.replace('_', '-')}@example.com"
            body = {"email": email, "password": PASSWORD, "role": "customer"}
            api.ok("POST", "/v2/users", {**body, "tenant_id": o[tenant]})
            login = api.call("POST", "/v2/auth/login", None, {"email": email, "password": PASSWORD})
            assert login.status_code == 200, login.text
            cookies[tenant] = login.json()["token"]
        yield api, w, cookies


def _host(api: Api, slug: str) -> str:
    return f"{slug}.localhost:{api.stack.api_port}"


def test_a_cookie_write_needs_the_pages_own_or_an_allowed_origin(
    world: tuple[Api, World, dict[str, str]],
) -> None:
    api, w, cookies = world
    path = f"/v2/customers/{w.objects['cus_a']}"
    body = {"low_balance_threshold": "3.00"}
    own = _host(api, "alpha")

    def patch(origin: str | None, host: str = own) -> int:
        headers = {"Host": host, "Cookie": f"streambill_session={cookies['cus_a']}"}
        if origin is not None:
            headers["Origin"] = origin
        return api.call("PATCH", path, None, body, headers=headers).status_code

    assert patch(f"http://{own}") == 200  # the page's own host
    assert patch(f"http://127.0.0.1:{api.stack.api_port}") == 200  # on the allow-list
    assert patch(f"http://{_host(api, 'beta')}") == 403  # another portal's page
    assert patch("http://evil.example") == 403
    assert patch(None) == 403  # a cookie write without an Origin
    assert patch("null") == 403


def test_logout_refuses_a_foreign_or_missing_origin(
    world: tuple[Api, World, dict[str, str]],
) -> None:
    api, _, cookies = world
    cookie = {"Cookie": f"streambill_session={cookies['cus_b']}"}
    for origin in ("http://evil.example", None):
        headers = {**cookie, **({"Origin": origin} if origin else {})}
        assert api.call("POST", "/logout", None, headers=headers).status_code == 403
    me = api.call("GET", "/v2/auth/me", None, headers=cookie)
    assert me.status_code == 200  # still signed in


def test_the_live_socket_takes_the_session_cookie_only_from_its_own_pages(
    world: tuple[Api, World, dict[str, str]],
) -> None:
    api, w, cookies = world
    url = f"ws://127.0.0.1:{api.stack.api_port}/v2/stream"
    cookie = {"Cookie": f"streambill_session={cookies['cus_a']}"}

    async def welcome(origin: str, headers: dict[str, str]) -> dict[str, object]:
        async with connect(
            url, origin=Origin(origin), additional_headers=headers, proxy=None, open_timeout=5
        ) as socket:
            await socket.send(orjson.dumps({"session": "cookie"}).decode())
            async with asyncio.timeout(5):
                try:
                    answer: dict[str, object] = orjson.loads(await socket.recv())
                except Exception as exc:  # closed: report the close code
                    return {"closed": getattr(getattr(exc, "rcvd", None), "code", None)}
            return answer

    own = f"http://127.0.0.1:{api.stack.api_port}"
    answer = asyncio.run(welcome(own, cookie))
    assert answer["type"] == "welcome" and answer["tenant_id"] == w.objects["cus_a"]
    assert asyncio.run(welcome(own, {})) == {"closed": 4401}  # no cookie, no session
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(welcome("http://evil.example", cookie))
    assert refused.value.response.status_code == 403


def test_a_white_label_host_admits_only_its_resellers_users(
    world: tuple[Api, World, dict[str, str]],
) -> None:
    api, _, _ = world
    credentials = {"email": "owner-cus-b@example.com", "password": PASSWORD}
    host = {"Host": _host(api, "alpha"), "Origin": f"http://{_host(api, 'alpha')}"}
    wrong = api.call("POST", "/portal/login", None, credentials, headers=host)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_portal"
    assert "set-cookie" not in wrong.headers
    host = {"Host": _host(api, "beta"), "Origin": f"http://{_host(api, 'beta')}"}
    right = api.call("POST", "/portal/login", None, credentials, headers=host)
    assert right.status_code == 200 and "streambill_session=" in right.headers["set-cookie"]
    unknown = api.call("GET", "/portal/login", None, headers={"Host": _host(api, "gamma")})
    assert unknown.status_code == 404
    deeper = api.call("GET", "/portal/login", None, headers={"Host": f"x.{_host(api, 'alpha')}"})
    assert deeper.status_code == 404  # under the base domain, but no reseller's slug


def test_resellers_cannot_take_the_platforms_host_names(
    world: tuple[Api, World, dict[str, str]],
) -> None:
    api, w, _ = world
    path = f"/v2/resellers/{w.objects['res_a']}"
    for slug in ("www", "admin", "api", "app"):
        r = api.call("PATCH", path, w.tokens["admin"], {"slug": slug})
        assert r.status_code == 422, (slug, r.text)
    # a custom domain is the admin's to set (after the reseller showed it owns it)
    r = api.call("PATCH", path, w.tokens["reseller_a"], {"custom_domain": "billing.example.com"})
    assert r.status_code == 403
    assert api.call("PATCH", path, w.tokens["reseller_a"], {"slug": "alpha-2"}).status_code == 200
    r = api.call("PATCH", path, w.tokens["admin"], {"custom_domain": "billing.example.com"})
    assert r.status_code == 200

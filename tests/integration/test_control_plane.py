"""The control plane through the api process, on SQLite and PostgreSQL: accounts reach the
accounts topic in order, keys and sessions, pagination, conflicts, limits, and no plaintext
secret anywhere it is stored or logged."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from apiworld import BACKENDS, PG_DSN, Api, bearer, running_api
from pipeline import read_topic
from streambill.streams.topics import ACCOUNTS, PAYMENTS

pytestmark = pytest.mark.integration

PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp(f"control-{request.param}")
    with running_api(tmp, request.param) as running:
        yield running


def _customer(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"name": "Praxis Dr. Weber", "currency": "EUR", "prices": PRICE, **fields}
    result: dict[str, Any] = api.ok("POST", "/v2/customers", body)
    return result


def test_every_change_reaches_the_accounts_topic_in_order(api: Api) -> None:
    reseller = api.ok("POST", "/v2/resellers", {"name": "Telco Partner", "currency": "EUR"})
    customer = _customer(api, reseller_id=reseller["id"])
    cid = customer["id"]
    for n in range(1, 6):
        api.ok("PATCH", f"/v2/customers/{cid}", {"low_balance_threshold": f"{n}.00"})
    topup = {"enabled": True, "threshold": "5.00", "amount": "20.00"}
    api.ok("PATCH", f"/v2/customers/{cid}", {"auto_topup": topup, "status": "suspended"})
    messages = read_topic(api.bootstrap, ACCOUNTS, until=8, timeout_s=30)
    mine = [m for m in messages if m["account_id"] == cid]
    assert [m["version"] for m in mine] == [1, 2, 3, 4, 5, 6, 7]
    assert mine[0]["parent_id"] == reseller["id"] and mine[0]["prices"] == PRICE
    assert [m["low_balance_threshold"] for m in mine[1:6]] == [
        "1.00",
        "2.00",
        "3.00",
        "4.00",
        "5.00",
    ]
    assert mine[-1]["auto_topup"] == topup and mine[-1]["status"] == "suspended"
    assert any(m["account_id"] == reseller["id"] and m["kind"] == "reseller" for m in messages)


def test_an_adjustment_is_one_payment_event_however_often_it_is_sent(api: Api) -> None:
    cid = _customer(api)["id"]
    body = {"amount": "-2.50", "reason": "refund of a dropped call"}
    first = api.call(
        "POST",
        f"/v2/customers/{cid}/adjustments",
        api.stack.admin_key,
        body,
        headers={"Idempotency-Key": "ticket-4711"},
    )
    again = api.call(
        "POST",
        f"/v2/customers/{cid}/adjustments",
        api.stack.admin_key,
        body,
        headers={"Idempotency-Key": "ticket-4711"},
    )
    other = api.call(
        "POST",
        f"/v2/customers/{cid}/adjustments",
        api.stack.admin_key,
        {"amount": "9.00", "reason": "x"},
        headers={"Idempotency-Key": "ticket-4711"},
    )
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert first.json() == again.json()
    assert first.json()["amount_micros"] == -2_500_000
    events = [
        m
        for m in read_topic(api.bootstrap, PAYMENTS, until=1, timeout_s=20)
        if m["customer_id"] == cid
    ]
    assert len(events) == 1
    assert events[0]["kind"] == "adjustment" and events[0]["amount"] == "-2.50"
    assert events[0]["actor"] == "admin:-:admin"
    audit = api.ok("GET", f"/v2/admin/audit?target={cid}")["items"]
    assert [a["action"] for a in audit] == ["customer.adjust", "customer.create"]


def test_a_key_is_shown_once_works_until_revoked_and_then_never(api: Api) -> None:
    cid = _customer(api)["id"]
    created = api.ok("POST", "/v2/api-keys", {"tenant_id": cid, "role": "service", "name": "ivr"})
    secret = created["key"]
    assert secret.startswith("sb_svc_") and created["display_prefix"] == secret[:12] + "…"
    listed = api.ok("GET", f"/v2/api-keys?tenant_id={cid}")["items"]
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    assert api.call("GET", f"/v2/customers/{cid}/balance", secret).status_code == 200
    used = api.ok("GET", f"/v2/api-keys?tenant_id={cid}")["items"][0]
    assert used["last_used_at"] is not None
    api.ok("DELETE", f"/v2/api-keys/{created['id']}")
    assert api.call("GET", f"/v2/customers/{cid}/balance", secret).status_code == 401
    assert api.ok("GET", f"/v2/api-keys?tenant_id={cid}")["items"] == []
    revoked = api.ok("GET", f"/v2/api-keys?tenant_id={cid}&include_revoked=true")["items"]
    assert revoked[0]["revoked_at"] is not None


def test_closing_a_customer_stops_its_keys_and_is_final(api: Api) -> None:
    cid = _customer(api)["id"]
    secret = api.ok("POST", "/v2/api-keys", {"tenant_id": cid, "role": "customer"})["key"]
    assert api.call("GET", f"/v2/customers/{cid}", secret).status_code == 200
    api.ok("PATCH", f"/v2/customers/{cid}", {"status": "closed"})
    assert api.call("GET", f"/v2/customers/{cid}", secret).status_code == 401
    reopen = api.call("PATCH", f"/v2/customers/{cid}", api.stack.admin_key, {"status": "active"})
    assert reopen.status_code == 409 and reopen.json()["error"]["code"] == "conflict"


def test_login_session_cookie_and_logout(api: Api) -> None:
    cid = _customer(api)["id"]
    email, password = f"owner-{cid}@example.com", "correct horse battery staple"
    api.ok(
        "POST",
        "/v2/users",
        {"email": email, "password": password, "role": "customer", "tenant_id": cid},
    )
    wrong = api.call("POST", "/v2/auth/login", None, {"email": email, "password": "nope"})
    assert wrong.status_code == 401
    login = api.client.post("/v2/auth/login", json={"email": email.upper(), "password": password})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    token = login.json()["token"]
    with httpx.Client(base_url=api.base_url, cookies={"streambill_session": token}) as browser:
        assert browser.get(f"/v2/customers/{cid}/balance").status_code == 200
        # a cookie-only write needs an allowed Origin (a cross-site form cannot post)
        patch = {"auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"}}
        evil = browser.patch(
            f"/v2/customers/{cid}", json=patch, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
        own = browser.patch(f"/v2/customers/{cid}", json=patch, headers={"Origin": api.base_url})
        assert own.status_code == 200, own.text
        # a customer may change its auto top-up, never its prices
        prices = browser.patch(
            f"/v2/customers/{cid}", json={"prices": []}, headers={"Origin": api.base_url}
        )
        assert prices.status_code == 403
    me = api.call("GET", "/v2/auth/me", token).json()
    assert me["role"] == "customer" and me["tenant_id"] == cid and me["user_id"]
    assert api.call("POST", "/v2/auth/logout", token).status_code == 204
    assert api.call("GET", "/v2/auth/me", token).status_code == 401


def test_cursor_pagination_visits_every_customer_once(api: Api) -> None:
    reseller = api.ok("POST", "/v2/resellers", {"name": "Pager", "currency": "USD"})["id"]
    created = {_customer(api, reseller_id=reseller, currency="USD")["id"] for _ in range(7)}
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = f"/v2/customers?reseller_id={reseller}&limit=3" + (
            f"&cursor={cursor}" if cursor else ""
        )
        page = api.ok("GET", query)
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(created) and len(seen) == 7
    bad = api.call("GET", "/v2/customers?cursor=bm90LWFuLWlk%00", api.stack.admin_key)
    assert bad.status_code == 422


def test_bad_input_gets_a_stable_code(api: Api) -> None:
    admin = api.stack.admin_key
    cases = [
        ("POST", "/v2/customers", {"name": "x", "currency": "JPY"}, 422, "invalid_request"),
        ("POST", "/v2/customers", {"name": "x\x00y", "currency": "EUR"}, 422, "invalid_request"),
        (
            "POST",
            "/v2/customers",
            {"name": "x", "currency": "EUR", "prices": [{"meter": "m", "unit_price": "-1"}]},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v2/resellers",
            {"name": "x", "currency": "EUR", "slug": "Not A Slug"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v2/customers/nope/adjustments",
            {"amount": "0", "reason": "r"},
            422,
            "invalid_request",
        ),
        ("POST", "/v2/usage", {"events": []}, 422, "invalid_event"),
    ]
    for method, path, body, status, code in cases:
        r = api.call(method, path, admin, body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)
    not_json = api.client.post(
        "/v2/customers", content=b"{", headers={**bearer(admin), "content-type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    cid = _customer(api, id="cus_fixed_id_1")["id"]
    taken = api.call("POST", "/v2/customers", admin, {"id": cid, "name": "x", "currency": "EUR"})
    assert taken.status_code == 409
    api.ok("POST", "/v2/resellers", {"name": "Brand", "currency": "EUR", "slug": "brand-one"})
    clash = api.call(
        "POST", "/v2/resellers", admin, {"name": "Brand 2", "currency": "EUR", "slug": "brand-one"}
    )
    assert clash.status_code == 409 and "slug" in clash.json()["error"]["message"]


def test_request_size_and_event_count_limits(api: Api) -> None:
    admin = api.stack.admin_key
    big = {"name": "x" * 100_000, "currency": "EUR"}
    r = api.call("POST", "/v2/customers", admin, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    event = {"event_id": "e", "customer_id": "c", "meter": "m", "quantity": "1"}
    many = api.call("POST", "/v2/usage", admin, {"events": [event] * 1001})
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_events"


def test_ingest_reports_each_rejected_event_and_answers_after_the_broker(api: Api) -> None:
    cid = _customer(api)["id"]
    secret = api.ok("POST", "/v2/api-keys", {"tenant_id": cid, "role": "service"})["key"]
    events = [
        {"event_id": "ok-1", "customer_id": cid, "meter": "call_minutes", "quantity": "1.5"},
        {"event_id": "bad-1", "customer_id": cid, "meter": "call_minutes", "quantity": "-1"},
        {"event_id": "foreign-1", "customer_id": "cus_someone_else", "meter": "m", "quantity": "1"},
        "not an object",
    ]
    r = api.call("POST", "/v2/usage", secret, {"events": events})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 3
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (1, "invalid_event"),
        (2, "unknown_customer"),
        (3, "invalid_event"),
    ]
    single = api.call("POST", "/v2/usage", secret, events[2])
    assert single.status_code == 404 and single.json()["error"]["code"] == "unknown_customer"
    usage = read_topic(api.bootstrap, "billing.usage.v1", until=1, timeout_s=20)
    mine = [u for u in usage if u.get("customer_id") == cid]
    assert [u["event_id"] for u in mine] == ["ok-1"] and mine[0]["occurred_at"]


def test_no_plaintext_secret_is_stored_logged_or_published(api: Api, tmp_path: Path) -> None:
    cid = _customer(api)["id"]
    password = "a very secret passphrase 42"
    email = f"scan-{cid}@example.com"
    api.ok(
        "POST",
        "/v2/users",
        {"email": email, "password": password, "role": "customer", "tenant_id": cid},
    )
    key = api.ok("POST", "/v2/api-keys", {"tenant_id": cid, "role": "customer"})["key"]
    session = api.ok("POST", "/v2/auth/login", {"email": email, "password": password})["token"]
    api.call("GET", f"/v2/customers/{cid}", key)
    api.call("GET", f"/v2/customers/{cid}", session)
    secrets = [password, key, session, api.stack.admin_key]
    stored = _database_text(api)
    logs = (api.stack.data_dir / "api.log").read_text(errors="replace")
    topic = str(read_topic(api.bootstrap, ACCOUNTS, until=1, timeout_s=10))
    assert email in stored  # the scan reads the right database
    for secret in secrets:
        assert secret not in stored, "plaintext secret in the database"
        assert secret not in logs, "plaintext secret in the api log"
        assert secret not in topic, "plaintext secret on the accounts topic"
        # not even a fragment long enough to matter
        assert secret[8:24] not in stored and secret[8:24] not in logs


def _database_text(api: Api) -> str:
    """Every byte of the control-plane database, as text."""
    if api.database_url is None:
        files = sorted(api.stack.data_dir.glob("control.db*"))
        assert files
        return "".join(f.read_bytes().decode("latin-1") for f in files)
    schema = api.database_url.split("%3D")[-1]
    out = []
    with psycopg.connect(PG_DSN) as conn:
        tables = conn.execute(
            "select table_name from information_schema.tables where table_schema = %s", (schema,)
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f'select * from "{schema}"."{table}"').fetchall()
            out.append(repr(rows))
    return "\n".join(out)


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    env = {"STREAMBILL_API_RATE_LIMIT_PER_S": "2", "STREAMBILL_API_RATE_BURST": "5"}
    with running_api(tmp_path, "sqlite", env) as api:
        statuses = [api.call("GET", "/v2/customers", api.stack.admin_key) for _ in range(12)]
        limited = [r for r in statuses if r.status_code == 429]
        assert 5 <= sum(r.status_code == 200 for r in statuses) <= 7
        assert limited and int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["error"]["code"] == "rate_limited"
        time.sleep(1.5)
        assert api.call("GET", "/v2/customers", api.stack.admin_key).status_code == 200


def test_changes_committed_before_a_crash_are_published_in_order_after_restart(
    tmp_path: Path,
) -> None:
    """Kill the api (SIGKILL) between commit and publish, then restart it: the accounts topic
    holds every change, in order per account."""
    with running_api(tmp_path, "sqlite", {"STREAMBILL_OUTBOX_RELAY": "0"}) as api:
        ids = [_customer(api, name=f"Crash {n}")["id"] for n in range(5)]
        for round_ in range(1, 4):
            for cid in ids:
                api.ok("PATCH", f"/v2/customers/{cid}", {"low_balance_threshold": f"{round_}.00"})
        assert api.stack.api is not None
        api.stack.api.kill(signal.SIGKILL)
        assert read_topic(api.bootstrap, ACCOUNTS, until=1, timeout_s=3) == []
        api.stack.env["STREAMBILL_OUTBOX_RELAY"] = "1"
        api.stack.start_api()
        messages = read_topic(api.bootstrap, ACCOUNTS, until=20, timeout_s=30)
    versions: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        versions[m["account_id"]].append(m["version"])
    assert {cid: versions[cid] for cid in ids} == {cid: [1, 2, 3, 4] for cid in ids}

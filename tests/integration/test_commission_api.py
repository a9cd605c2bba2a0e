"""Month close, statements, payouts, exchange rates and plans through a running api process,
on SQLite and PostgreSQL: routes, content types, stable error codes, scope (another
reseller's statements and payouts answer 404), and the command line against the api."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from apiworld import BACKENDS, Api, running_api
from pipeline import read_topic
from streambill.cli import main
from streambill.streams.topics import ACCOUNTS

pytestmark = pytest.mark.integration

ECB_DAILY = b"""<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01"
    xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>
  <Cube>
    <Cube time="2026-11-23">
      <Cube currency="USD" rate="1.0497"/>
      <Cube currency="JPY" rate="162.41"/>
      <Cube currency="GBP" rate="0.8402"/>
      <Cube currency="CHF" rate="0.9391"/>
    </Cube>
  </Cube>
</gesmes:Envelope>
"""
CLOSED_MONTH = "2026-10"


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp(f"commissions-{request.param}")
    with running_api(tmp, request.param) as running:
        yield running


@pytest.fixture(scope="module")
def tenants(api: Api) -> dict[str, str]:
    """Two resellers with a reseller key each, a customer of the first with its key."""
    a = api.ok("POST", "/v2/resellers", {"name": "Nordwind Telecom", "currency": "EUR"})["id"]
    b = api.ok("POST", "/v2/resellers", {"name": "Ostwind Ltd", "currency": "GBP"})["id"]
    customer = api.ok(
        "POST", "/v2/customers", {"name": "Praxis", "currency": "EUR", "reseller_id": a}
    )["id"]

    def key(tenant: str, role: str) -> str:
        return str(api.ok("POST", "/v2/api-keys", {"tenant_id": tenant, "role": role})["key"])

    return {
        "a": a,
        "b": b,
        "customer": customer,
        "key_a": key(a, "reseller"),
        "key_b": key(b, "reseller"),
        "key_customer": key(customer, "customer"),
        "key_service": key(a, "service"),
    }


def _error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_rates_are_set_imported_and_listed(api: Api, tenants: dict[str, str]) -> None:
    body = {
        "rates": [
            {"day": "2026-11-20", "currency": "USD", "rate": "1.0512"},
            {"day": "2026-11-20", "currency": "GBP", "rate": "0.8431"},
            {"day": "2026-11-20", "currency": "JPY", "rate": "161.2"},
        ]
    }
    first = api.ok("PUT", "/v2/exchange-rates", body)
    assert first == {
        "received": 3,
        "stored": 2,
        "unchanged": 0,
        "skipped": 1,
        "skipped_currencies": ["JPY"],
    }
    assert api.ok("PUT", "/v2/exchange-rates", body)["unchanged"] == 2
    xml = api.call(
        "POST",
        "/v2/exchange-rates/import",
        api.stack.admin_key,
        content=ECB_DAILY,
        headers={"Content-Type": "application/xml"},
    )
    assert xml.status_code == 200, xml.text
    assert xml.json() | {"skipped_currencies": None} == {
        "received": 4,
        "stored": 2,
        "unchanged": 0,
        "skipped": 2,
        "skipped_currencies": None,
    }
    assert xml.json()["skipped_currencies"] == ["CHF", "JPY"]
    csv = api.call(
        "POST",
        "/v2/exchange-rates/import",
        api.stack.admin_key,
        content=b"date,currency,rate\n2026-11-24,USD,1.0533\n2026-11-24,GBP,0.8399\n",
        headers={"Content-Type": "text/csv; charset=utf-8"},
    )
    assert csv.status_code == 200 and csv.json()["stored"] == 2, csv.text
    listed = api.ok("GET", "/v2/exchange-rates?from=2026-11-21&to=2026-11-24")["items"]
    assert [(r["day"], r["currency"], r["rate"], r["source"]) for r in listed] == [
        ("2026-11-23", "GBP", "0.8402", "ecb"),
        ("2026-11-23", "USD", "1.0497", "ecb"),
        ("2026-11-24", "GBP", "0.8399", "csv"),
        ("2026-11-24", "USD", "1.0533", "csv"),
    ]
    page = api.ok("GET", "/v2/exchange-rates?from=2026-11-20&limit=5")
    rest = api.ok("GET", f"/v2/exchange-rates?from=2026-11-20&limit=5&cursor={page['next_cursor']}")
    assert len(page["items"]) == 5 and len(rest["items"]) == 1 and rest["next_cursor"] is None
    audit = api.ok("GET", "/v2/admin/audit?target=exchange_rates")["items"]
    assert [a["details"]["source"] for a in audit][:3] == ["csv", "ecb", "api"]


def test_bad_rates_get_stable_codes(api: Api, tenants: dict[str, str]) -> None:
    admin = api.stack.admin_key

    def put(day: str, currency: str, rate: str) -> Any:
        body = {"rates": [{"day": day, "currency": currency, "rate": rate}]}
        return api.call("PUT", "/v2/exchange-rates", admin, body)

    _error(put("2026-11-31", "USD", "1.05"), 422, "invalid_rates")
    _error(put("2026-11-20", "usd", "1.05"), 422, "invalid_rates")
    _error(put("2026-11-20", "USD", "-1"), 422, "invalid_rates")
    _error(put("2026-11-20", "USD", "0"), 422, "invalid_rates")
    _error(put("1990-01-01", "USD", "1.05"), 422, "invalid_rates")
    _error(api.call("PUT", "/v2/exchange-rates", admin, {"rates": []}), 422, "invalid_request")

    def post(content: bytes, media_type: str) -> Any:
        headers = {"Content-Type": media_type}
        return api.call(
            "POST", "/v2/exchange-rates/import", admin, content=content, headers=headers
        )

    _error(post(b"<not xml", "application/xml"), 422, "invalid_rates")
    _error(post(b"<a/>", "text/xml"), 422, "invalid_rates")
    _error(post(b"2026-11-20,USD\n", "text/csv"), 422, "invalid_rates")
    _error(post(b"2026-11-20,USD,abc\n", "text/csv"), 422, "invalid_rates")
    _error(post(b"\xff\xfe", "text/csv"), 422, "invalid_rates")
    _error(post(ECB_DAILY, "text/plain"), 415, "unsupported_media_type")
    for role in ("key_a", "key_customer", "key_service"):
        _error(api.call("GET", "/v2/exchange-rates", tenants[role]), 403, "forbidden")
        _error(post_as(api, tenants[role]), 403, "forbidden")
    assert api.call("GET", "/v2/exchange-rates", None).status_code == 401


def post_as(api: Api, token: str) -> Any:
    return api.call(
        "POST",
        "/v2/exchange-rates/import",
        token,
        content=ECB_DAILY,
        headers={"Content-Type": "application/xml"},
    )


def test_a_plan_is_read_by_its_reseller_and_set_by_the_admin(
    api: Api, tenants: dict[str, str]
) -> None:
    a, path = tenants["a"], f"/v2/resellers/{tenants['a']}/commission-plan"
    default = api.ok("GET", path, token=tenants["key_a"])
    assert default["timezone"] == "Europe/Berlin" and len(default["tiers"]) == 4
    for who in ("key_b", "key_customer", "key_service"):
        _error(api.call("GET", path, tenants[who]), 404, "not_found")
    _error(
        api.call("GET", "/v2/resellers/res_ghost/commission-plan", api.stack.admin_key),
        404,
        "not_found",
    )
    version = api.ok("GET", f"/v2/resellers/{a}")["version"]
    plan = {"tiers": [{"from": "0", "rate": "0.2"}, {"from": "500", "rate": "0.3"}]}
    stored = api.ok("PUT", path, plan)
    assert stored["tiers"] == [{"from": "0", "rate": "0.2"}, {"from": "500", "rate": "0.3"}]
    assert stored["new_customer_bonus"] == "5"
    assert api.ok("GET", path, token=tenants["key_a"]) == stored
    assert api.ok("GET", f"/v2/resellers/{a}")["version"] == version + 1
    _error(api.call("PUT", path, tenants["key_a"], plan), 403, "forbidden")
    _error(api.call("PUT", path, tenants["key_customer"], plan), 403, "forbidden")
    bad = {"tiers": [{"from": "100", "rate": "0.2"}]}
    _error(api.call("PUT", path, api.stack.admin_key, bad), 422, "invalid_plan")
    _error(api.call("PUT", path, api.stack.admin_key, {"tier": []}), 422, "invalid_plan")
    _error(api.call("PUT", path, api.stack.admin_key, {"loyalty_months": 99}), 422, "invalid_plan")
    _error(api.call("PUT", path, api.stack.admin_key, [1, 2]), 422, "invalid_request")
    audit = api.ok("GET", f"/v2/admin/audit?target={a}")["items"]
    assert audit[0]["action"] == "reseller.commission_plan"
    messages = read_topic(api.bootstrap, ACCOUNTS, until=10, timeout_s=30)
    mine = [m for m in messages if m["account_id"] == a]
    assert mine[-1]["version"] == version + 1
    assert mine[-1]["commission_plan"] == stored


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def test_close_statements_and_documents(api: Api, tenants: dict[str, str]) -> None:
    a = tenants["a"]
    _error(
        api.call("POST", "/v2/commissions/close", api.stack.admin_key, {"month": _this_month()}),
        409,
        "month_not_closable",
    )
    _error(
        api.call("POST", "/v2/commissions/close", api.stack.admin_key, {"month": "2026-13"}),
        422,
        "invalid_request",
    )
    _error(
        api.call("POST", "/v2/commissions/close", tenants["key_a"], {"month": CLOSED_MONTH}),
        403,
        "forbidden",
    )
    body = {"month": CLOSED_MONTH, "reseller_id": a}
    first = api.ok("POST", "/v2/commissions/close", body)
    again = api.ok("POST", "/v2/commissions/close", body)
    assert first == again
    (statement,) = first["statements"]
    assert statement["id"] == f"st_{a}_{CLOSED_MONTH}" and statement["total_micros"] == 0
    assert statement["payout_status"] == "unpaid" and statement["currency"] == "EUR"
    base = f"/v2/resellers/{a}/statements"
    listed = api.ok("GET", base, token=tenants["key_a"])
    assert [s["id"] for s in listed["items"]] == [statement["id"]]
    assert api.ok("GET", f"{base}/{CLOSED_MONTH}", token=tenants["key_a"]) == statement
    csv = api.call("GET", f"{base}/{CLOSED_MONTH}.csv", tenants["key_a"])
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert f'filename="st_{a}_{CLOSED_MONTH}.csv"' in csv.headers["content-disposition"]
    assert csv.text.splitlines()[0].startswith("statement_id,reseller_id,month,line")
    assert csv.text.splitlines()[-1].endswith(",total,,statement total,,,,,0.00,EUR")
    pdf = api.call("GET", f"{base}/{CLOSED_MONTH}.pdf", tenants["key_a"])
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert api.call("GET", f"{base}/{CLOSED_MONTH}.pdf", tenants["key_a"]).content == pdf.content
    _error(api.call("GET", f"{base}/2026-09", api.stack.admin_key), 404, "not_found")
    _error(api.call("GET", f"{base}/2026-9", api.stack.admin_key), 422, "invalid_request")
    for who in ("key_b", "key_customer", "key_service"):
        for suffix in ("", f"/{CLOSED_MONTH}", f"/{CLOSED_MONTH}.csv", f"/{CLOSED_MONTH}.pdf"):
            _error(api.call("GET", base + suffix, tenants[who]), 404, "not_found")


def test_payout_runs_and_scope(api: Api, tenants: dict[str, str]) -> None:
    run = api.call("POST", "/v2/payouts/runs", api.stack.admin_key)
    assert run.status_code == 201, run.text
    assert run.json()["file_id"] is None and run.json()["minimum"] == "50.00"
    run_id = run.json()["id"]
    assert api.ok("GET", f"/v2/payouts/runs/{run_id}") == run.json()
    _error(
        api.call("GET", f"/v2/payouts/runs/{run_id}/pain.001.xml", api.stack.admin_key),
        404,
        "not_found",
    )
    _error(api.call("POST", "/v2/payouts/runs", tenants["key_a"]), 403, "forbidden")
    _error(api.call("GET", f"/v2/payouts/runs/{run_id}", tenants["key_a"]), 403, "forbidden")
    own = api.ok("GET", f"/v2/resellers/{tenants['a']}/payouts", token=tenants["key_a"])
    assert own == {"items": [], "next_cursor": None, "currency": "EUR", "due_micros": 0}
    for who in ("key_b", "key_customer", "key_service"):
        _error(
            api.call("GET", f"/v2/resellers/{tenants['a']}/payouts", tenants[who]), 404, "not_found"
        )
    _error(api.call("POST", "/v2/payouts/po_ghost/paid", api.stack.admin_key), 404, "not_found")
    _error(api.call("POST", "/v2/payouts/po_ghost/paid", tenants["key_a"]), 403, "forbidden")
    _error(api.call("GET", "/v2/payouts/po_ghost", tenants["key_a"]), 404, "not_found")
    failed = api.call("POST", "/v2/payouts/po_ghost/failed", api.stack.admin_key, {"reason": ""})
    _error(failed, 422, "invalid_request")


_GRAPHQL = """
query($r: String!, $m: String!) {
  statements(resellerId: $r) {
    items { id month totalMicros payoutStatus csvUrl lines { customerId } }
  }
  statement(resellerId: $r, month: $m) { id currency rate totalMicros pdfUrl }
  payouts(resellerId: $r) { items { id } currency dueMicros }
}
"""


def test_graphql_answers_statements_and_payouts_like_rest(
    api: Api, tenants: dict[str, str]
) -> None:
    a = tenants["a"]
    api.ok("POST", "/v2/commissions/close", {"month": CLOSED_MONTH, "reseller_id": a})  # once
    variables = {"r": a, "m": CLOSED_MONTH}
    answer = api.call(
        "POST", "/graphql", tenants["key_a"], {"query": _GRAPHQL, "variables": variables}
    )
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    data = answer.json()["data"]
    rest = api.ok("GET", f"/v2/resellers/{a}/statements/{CLOSED_MONTH}", token=tenants["key_a"])
    assert data["statement"] == {
        "id": rest["id"],
        "currency": rest["currency"],
        "rate": rest["rate"],
        "totalMicros": rest["total_micros"],
        "pdfUrl": f"/v2/resellers/{a}/statements/{CLOSED_MONTH}.pdf",
    }
    assert [s["id"] for s in data["statements"]["items"]] == [rest["id"]]
    payouts = api.ok("GET", f"/v2/resellers/{a}/payouts", token=tenants["key_a"])
    assert data["payouts"] == {
        "items": [{"id": p["id"]} for p in payouts["items"]],
        "currency": payouts["currency"],
        "dueMicros": payouts["due_micros"],
    }
    # Another reseller, a customer: NOT_FOUND, as REST answers 404.
    for who in ("key_b", "key_customer"):
        denied = api.call(
            "POST", "/graphql", tenants[who], {"query": _GRAPHQL, "variables": variables}
        )
        codes = {e["extensions"]["code"] for e in denied.json()["errors"]}
        assert codes == {"NOT_FOUND"} and denied.json()["data"] is None, denied.text


def test_the_command_line_asks_the_running_api(api: Api, tenants: dict[str, str]) -> None:
    env = {
        "STREAMBILL_API_PORT": str(api.stack.api_port),
        "STREAMBILL_ADMIN_API_KEY": api.stack.admin_key,
    }
    runner = CliRunner()
    done = runner.invoke(
        main, ["close-month", "--month", CLOSED_MONTH, "--reseller", tenants["b"]], env=env
    )
    assert done.exit_code == 0, done.output
    assert f'"id": "st_{tenants["b"]}_{CLOSED_MONTH}"' in done.output
    refused = runner.invoke(main, ["close-month", "--month", _this_month()], env=env)
    assert refused.exit_code == 1 and "month_not_closable" in refused.output
    paid = runner.invoke(main, ["payouts"], env=env)
    assert paid.exit_code == 0 and '"minimum": "50.00"' in paid.output, paid.output
    away = runner.invoke(main, ["payouts", "--api-url", "http://127.0.0.1:9"], env=env)
    assert away.exit_code == 1 and "did not answer" in away.output


def test_the_auto_closer_runs_in_the_api(api: Api) -> None:
    """Its first round runs at start-up (it holds the lease in a lone api)."""
    deadline = time.monotonic() + 30
    value = 0.0
    while time.monotonic() < deadline and value == 0.0:
        metrics = api.client.get("/metrics").text
        for line in metrics.splitlines():
            if line.startswith("streambill_autoclose_last_success_timestamp_seconds "):
                value = float(line.split()[1])
        time.sleep(0.2)
    assert value > 0

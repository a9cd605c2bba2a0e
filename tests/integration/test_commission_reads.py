"""Commission reads through a running api: entries published on ``billing.commissions.v1``
(replays included) reach ClickHouse through the sink, and REST and GraphQL answer the book's
figures to the micro, page the entries, default the month in the reseller's time zone, and
answer 404 to everyone but the admin and the reseller itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from apiworld import Api, running_api
from commissionbook import CommissionFeed, CustomerPlan, ledger_history, reference_rates
from pipeline import producer, send
from streambill.domain.commissions import Plan
from streambill.streams import topics

pytestmark = pytest.mark.integration

ZONE = "Pacific/Kiritimati"  # UTC+14: its month differs from UTC's for 14 hours of each
PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]


@dataclass
class Setup:
    api: Api
    reseller: str
    tokens: dict[str, str]
    feed: CommissionFeed
    slice_entry: dict[str, Any]


SLICE_MONTH = "2030-01"


def _slice_entry(reseller: str, customers: list[str], template: dict[str, Any]) -> dict[str, Any]:
    """An accrual the agent summed over two customers' facts, alone in its month."""
    parts = {customers[0]: 800_000_000, customers[1]: 400_000_000}
    return template | {
        "entry_id": f"{reseller}:{SLICE_MONTH}:0-1-0:accrual",
        "customer_id": "",
        "month": SLICE_MONTH,
        "kind": "accrual",
        "amount_micros": 330_000_000,
        "base_micros": 1_200_000_000,
        "base_delta_micros": 1_200_000_000,
        "tier": 1,
        "rate": "0.275",
        "position": 10_000,
        "month_commission_micros": 330_000_000,
        "month_bonus_micros": 0,
        "customers": parts,
        "facts": 23,
        "source_kind": "usage",
        "source_currency": "EUR",
        "fx_rate": None,
        "fx_date": None,
    }


def _key(api: Api, tenant: str, role: str) -> str:
    return str(api.ok("POST", "/v2/api-keys", {"tenant_id": tenant, "role": role})["key"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("commission-reads")
    with running_api(tmp, "sqlite") as api:
        body = {"name": "Commission Partner", "currency": "EUR", "timezone": ZONE}
        reseller = api.ok("POST", "/v2/resellers", body)["id"]
        other = api.ok("POST", "/v2/resellers", {"name": "Other", "currency": "GBP"})["id"]
        customers = {
            currency: api.ok(
                "POST",
                "/v2/customers",
                {"name": f"C {currency}", "currency": currency, "prices": PRICE}
                | {"reseller_id": reseller},
            )["id"]
            for currency in ("EUR", "USD")
        }
        tokens = {
            "admin": api.stack.admin_key,
            "reseller": _key(api, reseller, "reseller"),
            "other_reseller": _key(api, other, "reseller"),
            "customer": _key(api, customers["EUR"], "customer"),
            "service_of_reseller": _key(api, reseller, "service"),
            "service_of_customer": _key(api, customers["EUR"], "service"),
        }
        start = datetime.now(UTC) - timedelta(days=70)
        plans = [
            CustomerPlan(customers["EUR"], reseller, "EUR", start, Decimal("2.5")),
            CustomerPlan(customers["USD"], reseller, "USD", start + timedelta(days=9), Decimal(1)),
        ]
        feed = CommissionFeed(reseller, Plan(currency="EUR", timezone=ZONE), reference_rates())
        ledger = ledger_history(plans, months=3, heavy=customers["EUR"])
        for entry in ledger:
            feed.apply(entry)
        assert any(e["kind"] == "true_up" for e in feed.emitted)
        slice_entry = _slice_entry(reseller, list(customers.values()), feed.emitted[0])
        kafka = producer(api.bootstrap)
        for entry in [*feed.emitted, *feed.emitted[:25], slice_entry]:  # the copies: a replay
            send(kafka, topics.COMMISSIONS, entry, reseller)
        assert kafka.flush(30) == 0
        setup = Setup(api, reseller, tokens, feed, slice_entry)
        _wait_for_entries(setup)
        yield setup


def _wait_for_entries(setup: Setup, timeout_s: float = 60.0) -> None:
    months = {e["month"] for e in setup.feed.emitted} | {SLICE_MONTH}
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {m: _summary(setup, m)["entry_count"] for m in months}
        if counts == {m: _count(setup, m) for m in months}:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"commission entries not in ClickHouse: {counts}")
        time.sleep(0.3)


def _count(setup: Setup, month: str) -> int:
    if month == SLICE_MONTH:
        return 1
    return sum(1 for e in setup.feed.emitted if e["month"] == month)


def _summary(setup: Setup, month: str | None, token: str = "admin") -> dict[str, Any]:
    params = {"month": month} if month else {}
    path = f"/v2/resellers/{setup.reseller}/commissions"
    response = setup.api.call("GET", path, setup.tokens[token], params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_each_month_answers_the_books_figures_to_the_micro(setup: Setup) -> None:
    months = setup.feed.book.months
    assert len(months) >= 3
    for month, state in months.items():
        for token in ("admin", "reseller"):
            got = _summary(setup, month, token)
            assert got == {
                "reseller_id": setup.reseller,
                "month": month,
                "currency": "EUR",
                "base_micros": state.base_micros,
                "rate": str(setup.feed.plan.tiers[state.tier].rate),
                "commission_micros": state.commission_micros,
                "bonus_micros": state.bonus_micros,
                "total_micros": state.commission_micros + state.bonus_micros,
                "tier": state.tier,
                "entry_count": _count(setup, month),
                "entries_url": (
                    f"/v2/resellers/{setup.reseller}/commissions/entries?month={month}"
                ),
            }
    assert any(s.bonus_micros > 0 for s in months.values())


def test_the_month_defaults_to_the_current_one_in_the_resellers_time_zone(setup: Setup) -> None:
    before = datetime.now(ZoneInfo(ZONE)).strftime("%Y-%m")
    got = _summary(setup, None)
    after = datetime.now(ZoneInfo(ZONE)).strftime("%Y-%m")
    assert got["month"] in (before, after)
    state = setup.feed.book.months.get(got["month"])
    base = state.base_micros if state is not None else 0
    assert got["base_micros"] == base and got["entry_count"] == _count(setup, got["month"])


def test_a_month_without_entries_is_zero_at_the_first_tier(setup: Setup) -> None:
    got = _summary(setup, "2031-01")
    assert {k: got[k] for k in ("base_micros", "commission_micros", "bonus_micros")} == {
        "base_micros": 0,
        "commission_micros": 0,
        "bonus_micros": 0,
    }
    assert (got["total_micros"], got["tier"], got["rate"], got["currency"]) == (0, 0, "0.25", "EUR")
    assert got["entry_count"] == 0


def test_an_accrual_slice_reads_back_with_its_customers(setup: Setup) -> None:
    got = _summary(setup, SLICE_MONTH, "reseller")
    assert (got["base_micros"], got["commission_micros"], got["tier"], got["rate"]) == (
        1_200_000_000,
        330_000_000,
        1,
        "0.275",
    )
    response = setup.api.call("GET", got["entries_url"], setup.tokens["reseller"])
    (entry,) = response.json()["entries"]
    assert _comparable(entry) == _comparable(setup.slice_entry)


def _comparable(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "occurred_at": datetime.fromisoformat(entry["occurred_at"]),
        "created_at": datetime.fromisoformat(entry["created_at"]),
    }


def test_entries_page_in_position_order_each_once(setup: Setup) -> None:
    month = max(setup.feed.book.months, key=lambda m: _count(setup, m))
    expected = [e for e in setup.feed.emitted if e["month"] == month]
    url: str | None = _summary(setup, month)["entries_url"] + "&limit=7"
    pages: list[list[dict[str, Any]]] = []
    for _ in range(len(expected)):
        if url is None:
            break
        response = setup.api.call("GET", url, setup.tokens["reseller"])
        assert response.status_code == 200, response.text
        pages.append(response.json()["entries"])
        url = response.json()["next"]
    assert url is None
    assert all(len(p) == 7 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 7
    got = [entry for page in pages for entry in page]
    assert [_comparable(e) for e in got] == [_comparable(e) for e in expected]
    middle = expected[len(expected) // 2]["position"]
    response = setup.api.call(
        "GET",
        f"/v2/resellers/{setup.reseller}/commissions/entries",
        setup.tokens["admin"],
        params={"month": month, "after_position": middle, "limit": 1000},
    )
    tail = response.json()
    assert [e["position"] for e in tail["entries"]] == [
        e["position"] for e in expected if e["position"] > middle
    ]
    assert tail["next"] is None


@pytest.mark.parametrize(
    "token", ["other_reseller", "customer", "service_of_reseller", "service_of_customer"]
)
def test_everyone_but_the_admin_and_the_reseller_gets_404(setup: Setup, token: str) -> None:
    for path in ("commissions", "commissions/entries"):
        response = setup.api.call(
            "GET", f"/v2/resellers/{setup.reseller}/{path}", setup.tokens[token]
        )
        assert response.status_code == 404, (token, path, response.text)
        assert response.json()["error"]["code"] == "not_found"


def test_unknown_resellers_and_customers_are_404_even_for_the_admin(setup: Setup) -> None:
    customer = next(e["customer_id"] for e in setup.feed.emitted)
    for target in ("res_nobody", customer):
        response = setup.api.call(
            "GET", f"/v2/resellers/{target}/commissions", setup.tokens["admin"]
        )
        assert response.status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"month": "2026-13"},
        {"month": "2026-1"},
        {"month": "11-2026"},
        {"month": "2026-11-01"},
        {"limit": 0},
        {"limit": 1001},
        {"after_position": -1},
        {"after_position": 2**63},
    ],
)
def test_bad_parameters_are_422_invalid_request(setup: Setup, params: dict[str, Any]) -> None:
    for path in ("commissions", "commissions/entries"):
        if path == "commissions" and "month" not in params:
            continue
        response = setup.api.call(
            "GET", f"/v2/resellers/{setup.reseller}/{path}", setup.tokens["reseller"], params=params
        )
        assert response.status_code == 422, (path, params, response.text)
        assert response.json()["error"]["code"] == "invalid_request"


def test_no_credential_is_401(setup: Setup) -> None:
    response = setup.api.call("GET", f"/v2/resellers/{setup.reseller}/commissions", None)
    assert response.status_code == 401


_GRAPHQL = """
query ($id: String!, $month: String, $after: Int!) {
  commissions(resellerId: $id, month: $month) {
    resellerId month currency baseMicros rate commissionMicros bonusMicros totalMicros tier
    entryCount
    entries(limit: 5, afterPosition: $after) {
      entries {
        entryId kind amountMicros position fxRate fxDate occurredAt facts
        customers { customerId baseMicros }
      }
      nextAfterPosition
    }
  }
}
"""


def _graphql(setup: Setup, token: str, month: str | None, after: int = 0) -> dict[str, Any]:
    variables = {"id": setup.reseller, "month": month, "after": after}
    response = setup.api.call(
        "POST", "/graphql", setup.tokens[token], {"query": _GRAPHQL, "variables": variables}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_graphql_answers_the_same_figures_and_pages(setup: Setup) -> None:
    month = max(setup.feed.book.months, key=lambda m: _count(setup, m))
    state = setup.feed.book.months[month]
    expected = [e for e in setup.feed.emitted if e["month"] == month]
    found = _graphql(setup, "reseller", month)["data"]["commissions"]
    assert (found["baseMicros"], found["commissionMicros"], found["bonusMicros"]) == (
        state.base_micros,
        state.commission_micros,
        state.bonus_micros,
    )
    assert (found["tier"], found["rate"], found["entryCount"]) == (
        state.tier,
        str(setup.feed.plan.tiers[state.tier].rate),
        len(expected),
    )
    page = found["entries"]
    assert [e["entryId"] for e in page["entries"]] == [e["entry_id"] for e in expected[:5]]
    assert page["entries"][0]["amountMicros"] == expected[0]["amount_micros"]
    assert page["nextAfterPosition"] == expected[4]["position"]
    later = _graphql(setup, "admin", month, page["nextAfterPosition"])["data"]["commissions"]
    assert [e["entryId"] for e in later["entries"]["entries"]] == [
        e["entry_id"] for e in expected[5:10]
    ]
    for got, want in zip(page["entries"], expected[:5], strict=True):
        parts = {c["customerId"]: c["baseMicros"] for c in got["customers"]}
        assert (got["facts"], parts) == (want["facts"], want["customers"])
    sliced = _graphql(setup, "admin", SLICE_MONTH)["data"]["commissions"]["entries"]["entries"]
    assert {c["customerId"]: c["baseMicros"] for c in sliced[0]["customers"]} == (
        setup.slice_entry["customers"]
    )
    assert sliced[0]["facts"] == 23
    usd = [e for e in expected if e["fx_rate"] is not None]
    if usd:
        position = usd[0]["position"]
        one = _graphql(setup, "reseller", month, position - 1)["data"]["commissions"]
        first = one["entries"]["entries"][0]
        assert (first["fxRate"], first["fxDate"]) == (usd[0]["fx_rate"], usd[0]["fx_date"])


@pytest.mark.parametrize(
    ("token", "month", "code"),
    [
        ("other_reseller", "2026-11", "NOT_FOUND"),
        ("customer", "2026-11", "NOT_FOUND"),
        ("service_of_reseller", "2026-11", "NOT_FOUND"),
        ("reseller", "2026-13", "INVALID_REQUEST"),
    ],
)
def test_graphql_keeps_the_scope_and_the_month_rule(
    setup: Setup, token: str, month: str, code: str
) -> None:
    answer = _graphql(setup, token, month)
    assert answer.get("data") is None or answer["data"].get("commissions") is None
    assert answer["errors"][0]["extensions"]["code"] == code

"""The dashboards' reads through a running api: a customer's usage buckets and monthly
statements, a reseller's and the platform's key figures.

The world is written straight onto the output topics (``billing.ledger.v1``,
``billing.alerts.v1``, ``billing.deadletter.v1``) the way the worker writes them, including
a replayed ledger entry; the api's ClickHouse sink takes them in. Every expected figure is
computed here from the entries themselves (months with ``zoneinfo``, money as integers), not
read back from the product.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from apiworld import Api, running_api
from pipeline import producer, send
from streambill.streams import topics

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime.now(UTC)
PRICES = {"call_minutes": Decimal("0.15"), "sms": Decimal("0.01")}


@dataclass
class Book:
    """What was written, to compute every expectation from."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def post(
        self,
        customer: str,
        reseller: str | None,
        currency: str,
        kind: str,
        amount_micros: int,
        at: datetime,
        meter: str | None = None,
        quantity: str | None = None,
    ) -> dict[str, Any]:
        self.seqs[customer] += 1
        self.balances[customer] += amount_micros
        seq = self.seqs[customer]
        entry = {
            "entry_id": f"{customer}:{seq}",
            "source_event_id": f"ev-{customer}-{seq}",
            "source_topic": topics.USAGE if kind == "usage" else topics.PAYMENTS,
            "customer_id": customer,
            "reseller_id": reseller,
            "kind": kind,
            "meter": meter,
            "quantity": quantity,
            "amount_micros": amount_micros,
            "balance_micros": self.balances[customer],
            "currency": currency,
            "seq": seq,
            "occurred_at": at.isoformat(),
            "applied_at": (at + timedelta(milliseconds=40)).isoformat(),
        }
        self.entries.append(entry)
        return entry

    def usage(
        self, customer: str, reseller: str | None, currency: str, meter: str, qty: str, at: datetime
    ) -> dict[str, Any]:
        charge = (Decimal(qty) * PRICES[meter] * 1_000_000).quantize(Decimal(1), ROUND_HALF_EVEN)
        return self.post(customer, reseller, currency, "usage", -int(charge), at, meter, qty)


@dataclass
class World:
    api: Api
    book: Book
    reseller: str
    statement_customer: str
    kpi_customers: dict[str, str]  # label -> id
    tokens: dict[str, str]


def _wait(what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _customer(api: Api, name: str, currency: str, reseller: str | None) -> str:
    body: dict[str, Any] = {
        "name": name,
        "currency": currency,
        "prices": [{"meter": m, "unit_price": str(p)} for m, p in PRICES.items()],
    }
    if reseller is not None:
        body["reseller_id"] = reseller
    return str(api.ok("POST", "/v2/customers", body)["id"])


def _statement_entries(book: Book, cus: str) -> None:
    """Three months in Berlin time, one usage entry posted 00:10 on Nov 1 in Berlin (23:10
    UTC on Oct 31): it belongs to November."""
    post, usage = book.post, book.usage
    post(cus, None, "EUR", "topup", 20_000_000, datetime(2025, 10, 15, 10, tzinfo=UTC))
    usage(cus, None, "EUR", "call_minutes", "1.5", datetime(2025, 10, 31, 22, 30, tzinfo=UTC))
    usage(cus, None, "EUR", "call_minutes", "2", datetime(2025, 10, 31, 23, 10, tzinfo=UTC))
    usage(cus, None, "EUR", "sms", "3", datetime(2025, 11, 5, 9, tzinfo=UTC))
    usage(cus, None, "EUR", "call_minutes", "0.5", datetime(2025, 11, 5, 9, 30, tzinfo=UTC))
    post(cus, None, "EUR", "refund", -1_000_000, datetime(2025, 11, 6, tzinfo=UTC))
    post(cus, None, "EUR", "chargeback", -2_000_000, datetime(2025, 11, 7, tzinfo=UTC))
    post(cus, None, "EUR", "adjustment", 500_000, datetime(2025, 11, 8, tzinfo=UTC))
    post(cus, None, "EUR", "topup", 10_000_000, datetime(2025, 12, 1, 12, tzinfo=UTC))


def _kpi_entries(book: Book, res: str, ids: dict[str, str]) -> None:
    """active (recent and earlier), churned (earlier only), a GBP customer, and six more EUR
    customers with distinct spend for the top list."""
    recent, earlier = NOW - timedelta(minutes=30), NOW - timedelta(days=40)
    book.usage(ids["active"], res, "EUR", "call_minutes", "10", earlier)
    book.usage(ids["active"], res, "EUR", "call_minutes", "100", recent)
    book.usage(ids["churned"], res, "EUR", "call_minutes", "7", earlier)
    book.usage(ids["pound"], res, "GBP", "call_minutes", "3", recent - timedelta(minutes=5))
    for n in range(6):
        book.usage(ids[f"small{n}"], res, "EUR", "sms", str(100 * (n + 1)), recent)


def _alerts(now: datetime, customer: str) -> list[dict[str, Any]]:
    def alert(alert_id: str, kind: str, at: datetime) -> dict[str, Any]:
        return {
            "alert_id": alert_id,
            "customer_id": customer,
            "reseller_id": None,
            "kind": kind,
            "details": {},
            "created_at": at.isoformat(),
        }

    fresh = alert("fraud_suspected:fs_1", "fraud_suspected", now - timedelta(hours=1))
    return [
        fresh,
        fresh,  # a replay: counted once
        alert("fraud_suspected:fs_2", "fraud_suspected", now - timedelta(hours=2)),
        alert("fraud_suspected:fs_0", "fraud_suspected", now - timedelta(days=3)),
        alert("x:low_balance", "low_balance", now - timedelta(hours=1)),
    ]


def _letter(offset: int) -> dict[str, Any]:
    return {
        "topic": topics.USAGE,
        "partition": 0,
        "offset": offset,
        "key": "cus_nobody",
        "value": '{"event_id": "x"}',
        "error_code": "invalid_event",
        "reason": "customer_id: field required",
        "failed_at": (NOW - timedelta(minutes=offset)).isoformat(),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("insights")
    with running_api(tmp, "sqlite") as api:
        res = api.ok("POST", "/v2/resellers", {"name": "Insight Partner", "currency": "EUR"})["id"]
        other = api.ok("POST", "/v2/resellers", {"name": "Other Partner", "currency": "EUR"})["id"]
        statement_customer = _customer(api, "Praxis Statement", "EUR", None)
        labels = ["active", "churned", "pound", "suspended"] + [f"small{n}" for n in range(6)]
        ids = {
            label: _customer(api, f"Kunde {label}", "GBP" if label == "pound" else "EUR", res)
            for label in labels
        }
        api.ok("PATCH", f"/v2/customers/{ids['suspended']}", {"status": "suspended"})
        book = Book()
        _statement_entries(book, statement_customer)
        _kpi_entries(book, res, ids)
        p = producer(api.bootstrap)
        for entry in book.entries:
            send(p, topics.LEDGER, entry, entry["customer_id"])
        replayed = dict(book.entries[2], applied_at="2025-12-02T00:00:00+00:00")
        send(p, topics.LEDGER, replayed, replayed["customer_id"])  # the same entry_id again
        for alert in _alerts(NOW, statement_customer):
            send(p, topics.ALERTS, alert, alert["customer_id"])
        for offset in (1, 2, 3):
            send(p, topics.DEADLETTER, _letter(offset), "cus_nobody")
        p.flush(30)

        def key(tenant: str, role: str) -> str:
            return str(api.ok("POST", "/v2/api-keys", {"tenant_id": tenant, "role": role})["key"])

        tokens = {
            "reseller": key(res, "reseller"),
            "other_reseller": key(other, "reseller"),
            "customer": key(ids["active"], "customer"),
            "service_reseller": key(res, "service"),
        }
        _wait(
            "the sink to take in every entry",
            lambda: api.ok("GET", "/v2/admin/kpis")["ledger_entries"] == len(book.entries),
        )
        _wait("the alerts", lambda: api.ok("GET", "/v2/admin/kpis")["fraud_alerts_24h"] == 2)
        yield World(api, book, res, statement_customer, ids, tokens)


# -- usage ------------------------------------------------------------------------------------


def test_usage_buckets_per_day_and_hour(world: World) -> None:
    api, cus = world.api, world.statement_customer
    days = api.ok(
        "GET",
        f"/v2/customers/{cus}/usage?granularity=day"
        "&since=2025-10-31T05:00:00Z&until=2025-11-05T10:00:00%2B01:00",
    )
    assert days["customer_id"] == cus and days["currency"] == "EUR"
    assert (days["granularity"], days["since"], days["until"]) == (
        "day",
        "2025-10-31T00:00:00Z",  # widened to whole UTC days
        "2025-11-06T00:00:00Z",
    )
    assert days["buckets"] == [
        {
            "bucket": "2025-10-31T00:00:00Z",
            "meter": "call_minutes",
            "quantity": "3.5",  # 1.5 + 2, the replayed entry once
            "spend_micros": 525_000,
            "entries": 2,
        },
        {
            "bucket": "2025-11-05T00:00:00Z",
            "meter": "call_minutes",
            "quantity": "0.5",
            "spend_micros": 75_000,
            "entries": 1,
        },
        {
            "bucket": "2025-11-05T00:00:00Z",
            "meter": "sms",
            "quantity": "3",
            "spend_micros": 30_000,
            "entries": 1,
        },
    ]
    hours = api.ok(
        "GET",
        f"/v2/customers/{cus}/usage?granularity=hour"
        "&since=2025-10-31T22:00:00Z&until=2025-11-01T00:00:00Z",
    )
    assert [(b["bucket"], b["quantity"], b["spend_micros"]) for b in hours["buckets"]] == [
        ("2025-10-31T22:00:00Z", "1.5", 225_000),
        ("2025-10-31T23:00:00Z", "2", 300_000),
    ]


def test_usage_defaults_and_limits(world: World) -> None:
    api, active = world.api, world.kpi_customers["active"]
    hourly = api.ok("GET", f"/v2/customers/{active}/usage")
    since = datetime.fromisoformat(hourly["since"])
    until = datetime.fromisoformat(hourly["until"])
    assert hourly["granularity"] == "hour" and until - since == timedelta(hours=48)
    assert since < NOW < until
    assert [(b["meter"], b["quantity"], b["spend_micros"]) for b in hourly["buckets"]] == [
        ("call_minutes", "100", 15_000_000)  # the usage 40 days ago is outside
    ]
    daily = api.ok("GET", f"/v2/customers/{active}/usage?granularity=day")
    span = datetime.fromisoformat(daily["until"]) - datetime.fromisoformat(daily["since"])
    assert span == timedelta(days=31) and len(daily["buckets"]) == 1

    def error(query: str) -> tuple[int, str]:
        r = api.call("GET", f"/v2/customers/{active}/usage?{query}", api.stack.admin_key)
        return r.status_code, r.json()["error"]["code"]

    assert error("granularity=hour&since=2025-01-01T00:00:00Z&until=2025-02-12T00:00:00Z") == (
        422,
        "range_too_large",  # 1,008 hours
    )
    ok = "granularity=hour&since=2025-01-01T00:00:00Z&until=2025-02-11T16:00:00Z"  # 1,000
    assert api.call("GET", f"/v2/customers/{active}/usage?{ok}", api.stack.admin_key).is_success
    assert error("granularity=day&since=2020-01-01T00:00:00Z&until=2023-01-01T00:00:00Z") == (
        422,
        "range_too_large",
    )
    assert error("since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z") == (
        422,
        "invalid_request",
    )
    assert error("granularity=minute") == (422, "invalid_request")
    assert error("since=1900-01-01T00:00:00Z") == (422, "invalid_request")


# -- statements -------------------------------------------------------------------------------


def _expected_months(book: Book, customer: str) -> list[dict[str, Any]]:
    """Per Berlin month of applied_at: sums by kind, balances from the chain."""
    months: dict[str, dict[str, Any]] = {}
    mine = [e for e in book.entries if e["customer_id"] == customer]
    for e in sorted(mine, key=lambda e: e["seq"]):
        month = datetime.fromisoformat(e["applied_at"]).astimezone(BERLIN).strftime("%Y-%m")
        m = months.setdefault(
            month,
            {
                "month": month,
                "opening_balance_micros": e["balance_micros"] - e["amount_micros"],
                "topups_micros": 0,
                "usage_micros": 0,
                "refunds_micros": 0,
                "adjustments_micros": 0,
                "entries": 0,
            },
        )
        column = {
            "topup": "topups_micros",
            "usage": "usage_micros",
            "refund": "refunds_micros",
            "chargeback": "refunds_micros",
        }.get(e["kind"], "adjustments_micros")
        m[column] += e["amount_micros"]
        m["entries"] += 1
        m["closing_balance_micros"] = e["balance_micros"]
    return sorted(months.values(), key=lambda m: m["month"], reverse=True)


def test_statements_by_month_in_the_customers_zone(world: World) -> None:
    api, cus = world.api, world.statement_customer
    listed = api.ok("GET", f"/v2/customers/{cus}/statements")
    assert (listed["customer_id"], listed["currency"], listed["timezone"]) == (
        cus,
        "EUR",
        "Europe/Berlin",
    )
    expected = _expected_months(world.book, cus)
    assert [m["month"] for m in expected] == ["2025-12", "2025-11", "2025-10"]
    assert listed["statements"] == expected
    november = listed["statements"][1]
    assert november == {
        "month": "2025-11",
        "opening_balance_micros": 19_775_000,  # 20.00 - 1.5 * 0.15
        "topups_micros": 0,
        "usage_micros": -300_000 - 30_000 - 75_000,
        "refunds_micros": -3_000_000,
        "adjustments_micros": 500_000,
        "closing_balance_micros": 16_870_000,
        "entries": 6,
    }


def test_one_month_as_a_document_with_lines(world: World) -> None:
    api, cus = world.api, world.statement_customer
    doc = api.ok("GET", f"/v2/customers/{cus}/statements/2025-11")
    summary = {k: v for k, v in doc.items() if k not in ("lines", "customer_id", "currency")}
    assert summary == {**_expected_months(world.book, cus)[1], "timezone": "Europe/Berlin"}
    keys = ("kind", "meter", "quantity", "amount_micros", "entries")
    assert all(set(line) == set(keys) for line in doc["lines"])
    assert [tuple(line[k] for k in keys) for line in doc["lines"]] == [
        ("adjustment", None, None, 500_000, 1),
        ("chargeback", None, None, -2_000_000, 1),
        ("refund", None, None, -1_000_000, 1),
        ("usage", "call_minutes", "2.5", -375_000, 2),
        ("usage", "sms", "3", -30_000, 1),
    ]
    missing = api.call("GET", f"/v2/customers/{cus}/statements/2025-09", api.stack.admin_key)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = api.call("GET", f"/v2/customers/{cus}/statements/2025-13", api.stack.admin_key)
    assert bad.status_code == 422


def test_a_customer_without_entries_has_no_statements(world: World) -> None:
    suspended = world.kpi_customers["suspended"]
    listed = world.api.ok("GET", f"/v2/customers/{suspended}/statements")
    assert listed["statements"] == [] and listed["currency"] == "EUR"


def test_who_reads_usage_and_statements(world: World) -> None:
    api, active, cus = world.api, world.kpi_customers["active"], world.statement_customer
    for path in (f"/v2/customers/{active}/usage", f"/v2/customers/{active}/statements"):
        assert api.call("GET", path, world.tokens["customer"]).status_code == 200
        assert api.call("GET", path, world.tokens["reseller"]).status_code == 200
        assert api.call("GET", path, world.tokens["other_reseller"]).status_code == 404
    # the customer's own key does not see the direct customer
    for path in (f"/v2/customers/{cus}/usage", f"/v2/customers/{cus}/statements/2025-11"):
        assert api.call("GET", path, world.tokens["customer"]).status_code == 404
        assert api.call("GET", path, world.tokens["reseller"]).status_code == 404


# -- key figures -------------------------------------------------------------------------------


def _month_of(entry: dict[str, Any]) -> str:
    return datetime.fromisoformat(entry["occurred_at"]).astimezone(BERLIN).strftime("%Y-%m")


def test_reseller_kpis(world: World) -> None:
    api, res, ids = world.api, world.reseller, world.kpi_customers
    kpis = api.ok("GET", f"/v2/resellers/{res}/kpis", token=world.tokens["reseller"])
    month = datetime.now(BERLIN).strftime("%Y-%m")
    previous = (datetime.now(BERLIN).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    assert (kpis["reseller_id"], kpis["month"], kpis["timezone"]) == (res, month, "Europe/Berlin")
    assert kpis["customers_total"] == 10 and kpis["customers_suspended"] == 1
    assert kpis["customers_active"] == 8  # active, pound, six small; not churned or suspended
    assert (kpis["churned_customers"], kpis["churn_rate"]) == (1, "0.5000")  # 1 of 2
    revenue: dict[str, list[int]] = {"EUR": [0, 0], "GBP": [0, 0]}
    spend: dict[tuple[str, str], int] = defaultdict(int)
    for e in world.book.entries:
        if e["reseller_id"] == res and _month_of(e) in (month, previous):
            revenue[e["currency"]][_month_of(e) != month] -= e["amount_micros"]
            if _month_of(e) == month:
                spend[(e["currency"], e["customer_id"])] -= e["amount_micros"]
    assert kpis["revenue"] == [
        {"currency": c, "month_to_date_micros": r[0], "previous_month_micros": r[1]}
        for c, r in sorted(revenue.items())
    ]
    names = {v: f"Kunde {k}" for k, v in ids.items()}
    eur = sorted((-s, c) for (cur, c), s in spend.items() if cur == "EUR")[:5]
    gbp = sorted((-s, c) for (cur, c), s in spend.items() if cur == "GBP")[:5]
    expected = sorted([(s, "EUR", c) for s, c in eur] + [(s, "GBP", c) for s, c in gbp])
    assert kpis["top_customers"] == [
        {"customer_id": c, "name": names[c], "currency": cur, "spend_micros": -s}
        for s, cur, c in expected
    ]
    if spend:
        assert len(kpis["top_customers"]) == 6  # five of seven EUR customers, one GBP
        assert kpis["top_customers"][0]["customer_id"] == ids["active"]


def test_reseller_kpis_are_for_the_reseller_and_the_admin(world: World) -> None:
    api, res = world.api, world.reseller
    path = f"/v2/resellers/{res}/kpis"
    assert api.call("GET", path, api.stack.admin_key).status_code == 200
    for who in ("other_reseller", "customer", "service_reseller"):
        r = api.call("GET", path, world.tokens[who])
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), who
    assert api.call("GET", "/v2/resellers/ghost/kpis", api.stack.admin_key).status_code == 404


def test_admin_kpis(world: World) -> None:
    api = world.api
    kpis = api.ok("GET", "/v2/admin/kpis")
    today = NOW.date()
    usage = [e for e in world.book.entries if e["kind"] == "usage"]
    recent = {
        e["customer_id"]
        for e in usage
        if datetime.fromisoformat(e["occurred_at"]).date() >= today - timedelta(days=29)
    }
    revenue: dict[str, int] = defaultdict(int)
    for e in usage:
        at = datetime.fromisoformat(e["occurred_at"]).astimezone(UTC)
        if (at.year, at.month) == (NOW.year, NOW.month):
            revenue[e["currency"]] -= e["amount_micros"]
    assert kpis == {
        "resellers": 2,
        "customers": 11,
        "customers_active": len(recent),
        "usage_events_today": sum(
            1 for e in usage if datetime.fromisoformat(e["occurred_at"]).date() == today
        ),
        "revenue": [{"currency": c, "month_to_date_micros": m} for c, m in sorted(revenue.items())],
        "deadletters_open": 3,
        "fraud_alerts_24h": 2,
        "ledger_entries": len(world.book.entries),
    }
    assert len(recent) == 8
    r = api.call("GET", "/v2/admin/kpis", world.tokens["reseller"])
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

"""Commissions in chDB: the batch recomputation from ``ledger`` agrees with the streaming
``ResellerBook`` to the micro, and the reads over ``commissions`` add the book's entries up."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from commissionbook import CommissionFeed, CustomerPlan, ledger_history, reference_rates
from streambill.analytics import commissions
from streambill.analytics.client import connect
from streambill.analytics.commissions import MonthFigures
from streambill.analytics.migrate import migrate
from streambill.analytics.rows import CommissionRow, LedgerRow, commission_row, ledger_row
from streambill.commissions import queries
from streambill.commissions.close import share_commission
from streambill.domain.commissions import Plan, plan_from_document
from streambill.domain.fx import NoRate, RateTable

pytestmark = pytest.mark.integration

PLANS = {
    "res_eu": Plan(currency="EUR"),  # Europe/Berlin, the default tiers and bonuses
    "res_uk": plan_from_document(
        {
            "tiers": [{"from": "0", "rate": "0.2"}, {"from": "300", "rate": "0.3"}],
            "loyalty_months": 2,
            "high_usage_units": "100",
        },
        "GBP",
        "America/New_York",
    ),
}
CUSTOMERS = [
    CustomerPlan("cus_e1", "res_eu", "EUR", datetime(2026, 9, 2, 9, tzinfo=UTC), Decimal("2.5")),
    CustomerPlan("cus_u1", "res_eu", "USD", datetime(2026, 9, 30, 23, tzinfo=UTC), Decimal("1.3")),
    CustomerPlan("cus_e2", "res_eu", "EUR", datetime(2026, 10, 31, 23, tzinfo=UTC), Decimal("0.7")),
    CustomerPlan("cus_g1", "res_uk", "EUR", datetime(2026, 9, 1, 2, tzinfo=UTC), Decimal("0.9")),
    CustomerPlan("cus_g2", "res_uk", "GBP", datetime(2026, 9, 15, 12, tzinfo=UTC), Decimal("0.4")),
    CustomerPlan("cus_d1", None, "EUR", datetime(2026, 9, 3, tzinfo=UTC), Decimal("9")),
]
NO_ENTRIES = queries.MonthFigures("", (), 0, 0, 0, 0, 0, "")


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        migrate(client)
        yield client
    finally:
        client.close()


def _ledger_rows(entries: list[dict[str, Any]]) -> list[LedgerRow]:
    return [ledger_row(orjson.dumps(e)) for e in entries]


def _commission_rows(entries: list[dict[str, Any]]) -> list[CommissionRow]:
    return [commission_row(orjson.dumps(e)) for e in entries]


def _feed(ledger: list[dict[str, Any]], rates: RateTable) -> dict[str, CommissionFeed]:
    feeds = {r: CommissionFeed(r, plan, rates) for r, plan in PLANS.items()}
    for entry in ledger:
        if entry["reseller_id"] in feeds:
            feeds[entry["reseller_id"]].apply(entry)
    return feeds


@pytest.fixture
def world(ch: Client) -> tuple[list[dict[str, Any]], RateTable, dict[str, CommissionFeed]]:
    ledger = ledger_history(CUSTOMERS, heavy="cus_e1")
    rates = reference_rates()
    rows = _ledger_rows(ledger)
    ch.insert("ledger", rows, column_names=list(LedgerRow._fields))
    ch.insert("ledger", rows[5:60], column_names=list(LedgerRow._fields))  # a replay
    return ledger, rates, _feed(ledger + ledger[10:30], rates)  # the book sees repeats too


def test_the_batch_agrees_with_the_book_to_the_micro(
    ch: Client, world: tuple[list[dict[str, Any]], RateTable, dict[str, CommissionFeed]]
) -> None:
    _, rates, feeds = world
    expected = {
        (r, month): MonthFigures(*figures)
        for r, feed in feeds.items()
        for month, figures in feed.figures().items()
    }
    batch = commissions.batch_commissions(ch, PLANS, rates)
    assert batch == expected
    # The generated ledger has what the check is for.
    kinds = Counter(e["kind"] for feed in feeds.values() for e in feed.emitted)
    assert kinds["bonus_high_usage"] >= 1
    true_ups = [e["amount_micros"] for e in feeds["res_eu"].emitted if e["kind"] == "true_up"]
    assert min(true_ups) < 0 < max(true_ups)  # a tier crossed up, and down after a refund
    assert kinds["bonus_loyalty"] >= 3 and kinds["bonus_new_customer"] == 5
    assert any(e["fx_rate"] for e in feeds["res_eu"].emitted)  # the USD customer
    assert any(e["fx_rate"] for e in feeds["res_uk"].emitted)  # EUR into GBP
    assert max(s.tier for s in feeds["res_uk"].book.months.values()) == 1


def test_the_batch_takes_months_in_the_resellers_time_zone(
    ch: Client, world: tuple[list[dict[str, Any]], RateTable, dict[str, CommissionFeed]]
) -> None:
    _, rates, feeds = world
    october = commissions.batch_commissions(ch, PLANS, rates, months={"2026-10"})
    assert set(october) == {("res_eu", "2026-10"), ("res_uk", "2026-10")}
    # cus_e2's first top-up is at 23:00 UTC on 31 October: November in Berlin.
    assert feeds["res_eu"].book.customers["cus_e2"].first_topup_month == "2026-11"
    only_eu = commissions.batch_commissions(ch, {"res_eu": PLANS["res_eu"]}, rates)
    assert {r for r, _ in only_eu} == {"res_eu"}


def test_the_batch_refuses_to_guess_a_missing_rate(
    ch: Client, world: tuple[list[dict[str, Any]], RateTable, dict[str, CommissionFeed]]
) -> None:
    with pytest.raises(NoRate):
        commissions.batch_commissions(ch, PLANS, RateTable())


@pytest.mark.parametrize("reseller_id", sorted(PLANS))
def test_reads_add_up_the_books_entries_each_once(
    ch: Client,
    world: tuple[list[dict[str, Any]], RateTable, dict[str, CommissionFeed]],
    reseller_id: str,
) -> None:
    feed = world[2][reseller_id]
    rows = _commission_rows(feed.emitted)
    ch.insert("commissions", rows, column_names=list(CommissionRow._fields))
    ch.insert("commissions", rows[::3], column_names=list(CommissionRow._fields))  # replays
    plan = PLANS[reseller_id]
    for month, state in feed.book.months.items():
        totals = queries.month_figures(ch, reseller_id, month)
        figures = (totals.base_micros, totals.commission_micros, totals.bonus_micros)
        assert figures == (state.base_micros, state.commission_micros, state.bonus_micros)
        assert totals.total_micros == state.total_micros
        assert (totals.tier, totals.rate) == (state.tier, str(plan.tiers[state.tier].rate))
        mine = [e for e in feed.emitted if e["month"] == month]
        assert totals.entry_count == len(mine)
        assert (totals.currency, totals.currencies) == (plan.currency, (plan.currency,))

        parts = queries.customer_parts(ch, reseller_id, month)
        assert sum(parts.bases.values()) == state.base_micros
        assert sum(parts.bonuses.values()) == state.bonus_micros
        assert sorted(parts.bases.keys() | parts.bonuses.keys()) == sorted(
            {e["customer_id"] for e in mine}
        )

        paged: list[CommissionRow] = []
        after = 0
        for _ in range(len(mine) + 1):
            page = commissions.month_entries(ch, reseller_id, month, limit=4, after_position=after)
            if not page:
                break
            paged += page
            after = page[-1].position
        assert [r.entry_id for r in paged] == [e["entry_id"] for e in mine]
        assert paged == _commission_rows(mine)
    assert any(s.tier > 0 for s in feed.book.months.values()) == (reseller_id == "res_uk")
    assert queries.month_figures(ch, reseller_id, "2031-01") == NO_ENTRIES
    assert commissions.month_entries(ch, reseller_id, "2031-01") == []
    other = next(r for r in PLANS if r != reseller_id)
    assert queries.month_figures(ch, other, "2026-10") == NO_ENTRIES


def test_a_slice_over_several_customers_splits_the_base_exactly(ch: Client) -> None:
    def entry(n: int, kind: str, amount: int, **extra: Any) -> dict[str, Any]:
        return {
            "entry_id": f"s{n}:{kind}",
            "reseller_id": "res_s",
            "customer_id": extra.pop("customer_id", ""),
            "month": "2026-11",
            "kind": kind,
            "amount_micros": amount,
            "currency": "EUR",
            "base_micros": 0,
            "base_delta_micros": extra.pop("base_delta_micros", 0),
            "tier": extra.pop("tier", 0),
            "rate": extra.pop("rate", "0.25"),
            "position": n,
            "month_commission_micros": 0,
            "month_bonus_micros": 0,
            "source_entry_id": f"led-{n}",
            "source_kind": "usage",
            "source_amount_micros": 0,
            "source_currency": "EUR",
            "fx_rate": None,
            "fx_date": None,
            "occurred_at": "2026-11-03T10:00:00+00:00",
            "created_at": "2026-11-03T10:00:01+00:00",
            **extra,
        }

    slice_parts = {"cus_1": 700_000_000, "cus_2": 500_000_000}
    entries = [
        entry(1, "bonus_new_customer", 5_000_000, customer_id="cus_2", facts=1),
        entry(2, "true_up", 0, tier=1, rate="0.275", facts=0),
        entry(3, "accrual", 330_000_000, base_delta_micros=1_200_000_000, tier=1)
        | {"rate": "0.275", "customers": slice_parts, "facts": 17},
        entry(4, "accrual", 2_750_000, customer_id="cus_1", base_delta_micros=10_000_000)
        | {"tier": 1, "rate": "0.275"},
        entry(5, "accrual", -2_750_000, customer_id="cus_2", base_delta_micros=-10_000_000)
        | {"tier": 1, "rate": "0.275"},
    ]
    rows = _commission_rows(entries)
    ch.insert("commissions", rows + rows[2:3], column_names=list(CommissionRow._fields))
    totals, parts = queries.month_with_customers(ch, "res_s", "2026-11")
    assert (totals.base_micros, totals.commission_micros, totals.bonus_micros) == (
        1_200_000_000,
        330_000_000,
        5_000_000,
    )
    assert (totals.tier, totals.rate, totals.entry_count) == (1, "0.275", 5)
    # The slice's base is split by its customers' parts; the true-up (no base) is its
    # customer id's (empty) with nothing.
    assert parts.bases == {"cus_1": 710_000_000, "cus_2": 490_000_000}  # no line for a true-up
    assert parts.bonuses == {"cus_2": 5_000_000}
    # A statement shares the month's commission by those parts (not by the entries'
    # customer ids), so the slice's commission is its customers', to the micro.
    shares = share_commission(totals.commission_micros, parts.bases, Decimal(totals.rate))
    assert shares == {"cus_1": 195_250_000, "cus_2": 134_750_000}
    (stored,) = [r for r in commissions.month_entries(ch, "res_s", "2026-11") if r.position == 3]
    assert (stored.customers, stored.facts) == (slice_parts, 17)

"""A month's commission entries page by page, and an independent batch recomputation of
every month from ``ledger``.

Like :mod:`streambill.commissions.queries` (which reads a month's figures and its customers'
parts, for the statements and the commission reads API), every function takes the blocking
clickhouse-connect client first, so the api runs them through ``AsyncClickHouse.run`` on the
ClickHouse thread. ``commissions`` is a ReplacingMergeTree keyed by ``(reseller_id, month,
entry_id)``: a replayed entry is collapsed only at merge time, so the pages read
``LIMIT 1 BY entry_id``.

:func:`batch_commissions` is the check on the figures: it recomputes every reseller-month
straight from the ledger with the plan's rules, written apart from
:class:`~streambill.domain.commissions.ResellerBook` (no shared state machine, months taken
by ClickHouse's time zone functions), so the two can only agree by both being right.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Final, NamedTuple

from clickhouse_connect.driver.client import Client

from streambill.analytics.rows import CommissionRow, utc
from streambill.domain.commissions import BASE_SIGN, KINDS, Plan
from streambill.domain.fx import RateTable
from streambill.domain.money import DECIMAL_CONTEXT, MICROS_PER_UNIT, round_micros

ENTRIES_LIMIT_MAX: Final = 1000
_COLUMNS: Final = ", ".join(CommissionRow._fields)


def month_entries(
    client: Client, reseller_id: str, month: str, limit: int = 100, after_position: int = 0
) -> list[CommissionRow]:
    """The month's entries in ``position`` order after ``after_position``, each id once.

    At most one more than a page (``ENTRIES_LIMIT_MAX + 1``): a caller asks for a page and
    one entry more to learn whether another page follows."""
    limit = max(1, min(limit, ENTRIES_LIMIT_MAX + 1))
    rows = client.query(
        f"SELECT {_COLUMNS} FROM commissions"
        " WHERE reseller_id = {r:String} AND month = {m:String} AND position > {after:Int64}"
        " ORDER BY position, entry_id LIMIT 1 BY entry_id LIMIT {limit:UInt32}",
        parameters={"r": reseller_id, "m": month, "after": after_position, "limit": limit},
    ).result_rows
    return [_commission_row(r) for r in rows]


def latest_entries(client: Client, reseller_id: str, month: str, limit: int) -> list[CommissionRow]:
    """The month's newest ``limit`` entries (highest ``position`` first), each id once: what a
    dashboard shows without paging through the whole month."""
    limit = max(1, min(limit, ENTRIES_LIMIT_MAX))
    rows = client.query(
        f"SELECT {_COLUMNS} FROM commissions"
        " WHERE reseller_id = {r:String} AND month = {m:String}"
        " ORDER BY position DESC, entry_id LIMIT 1 BY entry_id LIMIT {limit:UInt32}",
        parameters={"r": reseller_id, "m": month, "limit": limit},
    ).result_rows
    return [_commission_row(r) for r in rows]


def _commission_row(row: Sequence[Any]) -> CommissionRow:
    values = list(row)
    values[-2] = utc(values[-2])
    values[-1] = utc(values[-1])
    return CommissionRow(*values)


# -- the independent batch check -----------------------------------------------------------


@dataclass(frozen=True)
class MonthFigures:
    """What the rules give for one reseller-month, in the reseller's currency."""

    base_micros: int
    commission_micros: int
    bonus_micros: int

    @property
    def total_micros(self) -> int:
        return self.commission_micros + self.bonus_micros


class LedgerFact(NamedTuple):
    """What the batch needs of one ledger row; ``day`` is ``occurred_at``'s calendar day in
    the reseller's time zone, as ClickHouse computed it."""

    reseller_id: str
    customer_id: str
    seq: int
    kind: str
    meter: str | None
    quantity: Decimal
    amount_micros: int
    currency: str
    day: date


_FACTS_SQL: Final = """
SELECT reseller_id, customer_id, seq, kind, meter, quantity, amount_micros, currency,
       toDate(occurred_at, {tz:String}) AS day
FROM ledger FINAL
WHERE reseller_id IN {r:Array(String)}
  AND kind IN {kinds:Array(String)}
"""


def ledger_facts(client: Client, plans: Mapping[str, Plan]) -> Iterator[LedgerFact]:
    """The ledger rows of the resellers in ``plans`` that commissions count (each entry
    once), streamed in blocks: one query per time zone among the plans."""
    by_zone: dict[str, list[str]] = defaultdict(list)
    for reseller_id, plan in plans.items():
        by_zone[plan.timezone].append(reseller_id)
    for zone, resellers in sorted(by_zone.items()):
        parameters = {"tz": zone, "r": sorted(resellers), "kinds": sorted(KINDS)}
        with client.query_row_block_stream(_FACTS_SQL, parameters=parameters) as stream:
            for block in stream:
                for r in block:
                    yield LedgerFact(
                        str(r[0]),
                        str(r[1]),
                        int(r[2]),
                        str(r[3]),
                        r[4],
                        Decimal(r[5]),
                        int(r[6]),
                        str(r[7]),
                        r[8],
                    )


@dataclass
class _Reseller:
    """The batch's tallies for one reseller."""

    base: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # customer -> (seq, month) of its first top-up (the lowest seq: the first applied)
    first_topup: dict[str, tuple[int, str]] = field(default_factory=dict)
    usage_months: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    units: dict[tuple[str, str], Decimal] = field(default_factory=lambda: defaultdict(Decimal))


def batch_commissions(
    client: Client,
    plans: Mapping[str, Plan],
    rates: RateTable,
    months: Collection[str] | None = None,
) -> dict[tuple[str, str], MonthFigures]:
    """Every (reseller, month) of the resellers in ``plans``, recomputed from ``ledger``.

    Reads the whole ledger of those resellers (bonuses depend on earlier months), and
    returns the months in ``months`` (all when None). Raises
    :class:`~streambill.domain.fx.NoRate` when a customer's amount cannot be converted.
    """
    return batch_from_facts(ledger_facts(client, plans), plans, rates, months)


def batch_from_facts(
    facts: Iterable[LedgerFact],
    plans: Mapping[str, Plan],
    rates: RateTable,
    months: Collection[str] | None = None,
) -> dict[tuple[str, str], MonthFigures]:
    """The rules of docs/commissions.md applied to ledger facts in any order."""
    tallies: dict[str, _Reseller] = defaultdict(_Reseller)
    for fact in facts:
        plan = plans.get(fact.reseller_id)
        if plan is not None:
            _tally(tallies[fact.reseller_id], plan, rates, fact)
    out: dict[tuple[str, str], MonthFigures] = {}
    for reseller_id, tally in tallies.items():
        plan = plans[reseller_id]
        bonuses = _bonuses(tally, plan)
        for month in sorted(tally.base.keys() | bonuses.keys()):
            if months is None or month in months:
                base = tally.base.get(month, 0)
                figures = MonthFigures(base, _commission(plan, base), bonuses.get(month, 0))
                out[(reseller_id, month)] = figures
    return out


def _tally(tally: _Reseller, plan: Plan, rates: RateTable, fact: LedgerFact) -> None:
    month = f"{fact.day.year:04d}-{fact.day.month:02d}"
    if fact.kind == "topup":
        first = tally.first_topup.get(fact.customer_id)
        if first is None or fact.seq < first[0]:
            tally.first_topup[fact.customer_id] = (fact.seq, month)
        return
    amount = abs(fact.amount_micros)
    if fact.currency != plan.currency:
        amount = rates.convert(amount, fact.currency, plan.currency, fact.day).micros
    if fact.kind == "usage":
        tally.base[month] += amount
        tally.usage_months[fact.customer_id].add(month)
        if fact.meter == plan.high_usage_meter:
            tally.units[(fact.customer_id, month)] += fact.quantity
    else:  # refunds, chargebacks and their reversals
        tally.base[month] += BASE_SIGN[fact.kind] * amount


def _bonuses(tally: _Reseller, plan: Plan) -> dict[str, int]:
    bonus: dict[str, int] = defaultdict(int)
    for customer_id, (_, first_month) in tally.first_topup.items():
        bonus[first_month] += plan.new_customer_bonus_micros
        after = [_month_after(first_month, n) for n in range(1, plan.loyalty_months + 1)]
        if set(after) <= tally.usage_months.get(customer_id, set()):
            bonus[after[-1]] += plan.loyalty_bonus_micros
    for (_, month), units in tally.units.items():
        if units >= plan.high_usage_units:
            bonus[month] += plan.high_usage_bonus_micros
    return bonus


def _commission(plan: Plan, base_micros: int) -> int:
    """The rate of the tier the whole base falls in, on the whole base, rounded once."""
    rate = plan.tiers[0].rate
    for tier in plan.tiers:
        if base_micros >= tier.from_micros:
            rate = tier.rate
    units = DECIMAL_CONTEXT.divide(Decimal(base_micros), MICROS_PER_UNIT)
    return round_micros(DECIMAL_CONTEXT.multiply(units, rate))


def _month_after(month: str, n: int) -> str:
    """
    >>> _month_after("2026-11", 2), _month_after("2026-12", 13)
    ('2027-01', '2028-01')
    """
    months = int(month[:4]) * 12 + int(month[5:7]) - 1 + n
    return f"{months // 12:04d}-{months % 12 + 1:02d}"

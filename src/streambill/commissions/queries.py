"""ClickHouse reads of the ``commissions`` table for a reseller's month: its figures (the
statements and the commission reads API both read them here), each customer's part of its
base and its bonuses (the statements' lines), month totals, and which reseller months hold
entries.

Each function takes the blocking clickhouse-connect client first (the api runs them through
``AsyncClickHouse.run``). ``commissions`` is a ReplacingMergeTree on ``entry_id``: reads use
``FINAL`` so a replayed entry counts once. A month's base is the sum of ``base_delta_micros``,
its commission the sum of its ``accrual`` and ``true_up`` amounts, its bonus the sum of the
``bonus_*`` amounts, its tier, rate and currency those of its entry with the highest
``position``. How a month's commission is shared among its customers is the statements'
(:func:`~streambill.commissions.close.share_commission`): the table only knows each
customer's part of the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from streambill.domain.commissions import Plan

COMMISSION_KINDS: Final = ("accrual", "true_up")
BONUS_KINDS: Final = ("bonus_new_customer", "bonus_loyalty", "bonus_high_usage")
ALL_KINDS: Final = COMMISSION_KINDS + BONUS_KINDS


@dataclass(frozen=True)
class MonthFigures:
    """A reseller's month as its entries add up (all zeros, tier 0 and no rate or currency
    for a month without entries)."""

    currency: str  # of the entry with the highest position
    currencies: tuple[str, ...]  # every currency seen: one, unless something is wrong
    base_micros: int
    commission_micros: int
    bonus_micros: int
    entry_count: int
    tier: int  # of the entry with the highest position
    rate: str

    @property
    def total_micros(self) -> int:
        return self.commission_micros + self.bonus_micros

    def tier_and_rate(self, plan: Plan) -> tuple[int, str]:
        """The month's tier and rate: its latest entry's, or without entries the plan's
        first tier.

        >>> empty = MonthFigures("", (), 0, 0, 0, 0, 0, "")
        >>> empty.tier_and_rate(Plan(currency="EUR"))
        (0, '0.25')
        """
        if self.entry_count == 0:
            return 0, str(plan.tiers[0].rate)
        return self.tier, self.rate


@dataclass(frozen=True)
class CustomerParts:
    """A reseller's month per customer: what its statement's lines are made of."""

    bases: dict[str, int]  # customer -> its part of the base
    bonuses: dict[str, int]  # customer -> its bonuses


_FIGURES_SQL: Final = """
SELECT argMax(currency, position), groupUniqArray(currency), sum(base_delta_micros),
       sumIf(amount_micros, kind IN {commission:Array(String)}),
       sumIf(amount_micros, kind IN {bonus:Array(String)}),
       count(), argMax(tier, position), argMax(rate, position)
FROM commissions FINAL
WHERE reseller_id = {r:String} AND month = {m:String} AND kind IN {kinds:Array(String)}
"""
# Each customer's part of the base: an accrual slice (many facts summed by the agent) names
# the parts in ``customers``; an entry without it is its ``customer_id``'s alone. Only
# accruals carry base (a true-up restates the commission, it has no customer and no base).
_BASES_SQL: Final = """
SELECT part.1, sum(part.2) FROM commissions FINAL
ARRAY JOIN if(empty(customers), [(customer_id, base_delta_micros)],
              arrayZip(mapKeys(customers), mapValues(customers))) AS part
WHERE reseller_id = {r:String} AND month = {m:String} AND kind = 'accrual'
GROUP BY part.1 ORDER BY part.1
"""
_BONUSES_SQL: Final = """
SELECT customer_id, sum(amount_micros) FROM commissions FINAL
WHERE reseller_id = {r:String} AND month = {m:String} AND kind IN {bonus:Array(String)}
GROUP BY customer_id ORDER BY customer_id
"""


def _parameters(reseller_id: str, month: str) -> dict[str, Any]:
    return {
        "r": reseller_id,
        "m": month,
        "commission": list(COMMISSION_KINDS),
        "bonus": list(BONUS_KINDS),
        "kinds": list(ALL_KINDS),
    }


def month_figures(client: Client, reseller_id: str, month: str) -> MonthFigures:
    """The month's totals, tier, rate and currency, from its entries (each once)."""
    row = client.query(_FIGURES_SQL, parameters=_parameters(reseller_id, month)).result_rows[0]
    currency, currencies, base, commission, bonus, count, tier, rate = row
    return MonthFigures(
        currency=str(currency),
        currencies=tuple(sorted(str(c) for c in currencies)),
        base_micros=int(base),
        commission_micros=int(commission),
        bonus_micros=int(bonus),
        entry_count=int(count),
        tier=int(tier),
        rate=str(rate),
    )


def customer_parts(client: Client, reseller_id: str, month: str) -> CustomerParts:
    """Each customer's part of the month's base, and its bonuses (by customer id)."""
    parameters = _parameters(reseller_id, month)
    bases = client.query(_BASES_SQL, parameters=parameters).result_rows
    bonuses = client.query(_BONUSES_SQL, parameters=parameters).result_rows
    return CustomerParts(
        bases={str(c): int(b) for c, b in bases},
        bonuses={str(c): int(b) for c, b in bonuses},
    )


def month_with_customers(
    client: Client, reseller_id: str, month: str
) -> tuple[MonthFigures, CustomerParts]:
    """:func:`month_figures` and :func:`customer_parts` in one call, as a statement needs
    them: the api runs a call on its ClickHouse thread as a whole, and its sink inserts
    through that thread, so no entry lands between the reads."""
    return month_figures(client, reseller_id, month), customer_parts(client, reseller_id, month)


def month_totals(client: Client, reseller_id: str, months: Sequence[str]) -> dict[str, int]:
    """Commission plus bonus per month, for the months asked (months without entries: 0)."""
    if not months:
        return {}
    rows = client.query(
        "SELECT month, sum(amount_micros) FROM commissions FINAL"
        " WHERE reseller_id = {r:String} AND month IN {ms:Array(String)}"
        " AND kind IN {kinds:Array(String)} GROUP BY month",
        parameters={"r": reseller_id, "ms": list(months), "kinds": list(ALL_KINDS)},
    ).result_rows
    found = {str(m): int(total) for m, total in rows}
    return {m: found.get(m, 0) for m in months}


def months_with_entries(client: Client, last_month: str) -> dict[str, set[str]]:
    """reseller id -> months up to ``last_month`` that hold entries (duplicates do not
    matter here, so no FINAL)."""
    rows = client.query(
        "SELECT DISTINCT reseller_id, month FROM commissions WHERE month <= {m:String}",
        parameters={"m": last_month},
    ).result_rows
    out: dict[str, set[str]] = {}
    for reseller_id, month in rows:
        out.setdefault(str(reseller_id), set()).add(str(month))
    return out


def resellers_with_entries(client: Client, month: str) -> set[str]:
    rows = client.query(
        "SELECT DISTINCT reseller_id FROM commissions WHERE month = {m:String}",
        parameters={"m": month},
    ).result_rows
    return {str(r[0]) for r in rows}

"""Reseller commissions: plans, tiers, bonuses, and their accrual one ledger entry at a time.

Rules (the defaults of :class:`Plan`; each reseller may have its own):

- **Base**: a calendar month's net usage charges of the reseller's customers (refunds and
  chargebacks reduce it), months in the reseller's time zone, amounts in its currency.
- **Rate** by the month's base: below 1,000 -> 25%; from 1,000 -> 27.5%; from 5,000 -> 30%;
  from 10,000 -> 32.5%. The month's rate applies to the whole month's base.
- **Bonuses**: 5.00 per new customer when its first top-up succeeds; 10.00 once a customer has
  had usage in each of the 3 calendar months after the month of its first top-up; 2.00 per
  month for each customer with at least 500 units of the plan's main meter in that month.

:class:`ResellerBook` accrues as facts arrive so that at every moment a month's accrued total
equals the rules applied to what has arrived so far, to the micro: the commission part is
always ``round(rate(base) x base)`` (one rounding, half-even), each entry the difference
between two such values, so entries telescope exactly. When a fact moves the base into
another tier, a ``true_up`` entry first restates the base before it at the new rate, then the
fact's ``accrual`` follows at that rate.

>>> from datetime import UTC
>>> book = ResellerBook("res_1", Plan(currency="EUR"))
>>> at = datetime(2026, 11, 3, 10, tzinfo=UTC)
>>> [(e.kind, e.amount_micros) for e in book.apply(Fact("e1", "cus_1", "usage", 900_000_000, at))]
[('accrual', 225000000)]
>>> [(e.kind, e.amount_micros) for e in book.apply(Fact("e2", "cus_1", "usage", 200_000_000, at))]
[('true_up', 22500000), ('accrual', 55000000)]
>>> book.month("2026-11").commission_micros, round_micros(Decimal("1100") * Decimal("0.275"))
(302500000, 302500000)
>>> book.apply(Fact("e2", "cus_1", "usage", 200_000_000, at))  # a duplicate changes nothing
[]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Final
from zoneinfo import ZoneInfo

from streambill.domain.money import DECIMAL_CONTEXT, MICROS_PER_UNIT, round_micros

KINDS: Final = frozenset({"usage", "refund", "chargeback", "topup"})
DEDUP_MAX: Final = 1_000_000


@dataclass(frozen=True)
class Tier:
    from_micros: int  # the month's base from which this rate applies
    rate: Decimal  # a fraction: 0.25 is 25%


DEFAULT_TIERS: Final = (
    Tier(0, Decimal("0.25")),
    Tier(1_000 * MICROS_PER_UNIT, Decimal("0.275")),
    Tier(5_000 * MICROS_PER_UNIT, Decimal("0.30")),
    Tier(10_000 * MICROS_PER_UNIT, Decimal("0.325")),
)


@dataclass(frozen=True)
class Plan:
    """A reseller's commission plan; amounts in ``currency`` (the reseller's)."""

    currency: str
    timezone: str = "Europe/Berlin"
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    new_customer_bonus_micros: int = 5 * MICROS_PER_UNIT
    loyalty_bonus_micros: int = 10 * MICROS_PER_UNIT
    loyalty_months: int = 3
    high_usage_bonus_micros: int = 2 * MICROS_PER_UNIT
    high_usage_meter: str = "call_minutes"
    high_usage_units: Decimal = Decimal(500)

    def tier_of(self, base_micros: int) -> int:
        """The tier index for a month's base (a negative base is in the first tier).

        >>> plan = Plan(currency="EUR")
        >>> [plan.tier_of(m * MICROS_PER_UNIT) for m in (-5, 0, 999, 1_000, 4_999, 5_000, 10_000)]
        [0, 0, 0, 1, 1, 2, 3]
        """
        index = 0
        for n, tier in enumerate(self.tiers):
            if base_micros >= tier.from_micros:
                index = n
        return index

    def commission(self, base_micros: int) -> tuple[int, int]:
        """(tier index, commission micros) for a month's base: the rate of the base's tier
        on the whole base, rounded half-even once.

        >>> Plan(currency="EUR").commission(10_000 * MICROS_PER_UNIT)
        (3, 3250000000)
        """
        index = self.tier_of(base_micros)
        return index, self.at_rate(base_micros, index)

    def at_rate(self, base_micros: int, tier: int) -> int:
        units = DECIMAL_CONTEXT.divide(Decimal(base_micros), MICROS_PER_UNIT)
        return round_micros(DECIMAL_CONTEXT.multiply(units, self.tiers[tier].rate))

    def month_of(self, at: datetime) -> str:
        """The calendar month (``YYYY-MM``) of an instant in the plan's time zone.

        >>> from datetime import UTC
        >>> Plan(currency="EUR").month_of(datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
        '2026-12'
        """
        return at.astimezone(_zone(self.timezone)).strftime("%Y-%m")

    def day_of(self, at: datetime) -> date:
        return at.astimezone(_zone(self.timezone)).date()


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def add_months(month: str, n: int) -> str:
    """The month ``n`` months after ``month``.

    >>> add_months("2026-11", 3)
    '2027-02'
    """
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) + n
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


@dataclass(frozen=True)
class Fact:
    """What the book needs of a ledger entry, its amount already in the plan's currency.

    ``amount_micros`` is positive: the usage charge, the refund, the chargeback, the top-up.
    """

    entry_id: str
    customer_id: str
    kind: str
    amount_micros: int
    occurred_at: datetime
    meter: str | None = None
    quantity: Decimal = Decimal(0)


@dataclass(frozen=True)
class CommissionEntry:
    entry_id: str  # <source entry id>:<kind>: a replay makes the same id
    reseller_id: str
    customer_id: str
    month: str
    kind: str  # accrual | true_up | bonus_new_customer | bonus_loyalty | bonus_high_usage
    amount_micros: int
    currency: str
    base_micros: int  # the month's base after the fact
    tier: int
    rate: Decimal
    source_entry_id: str
    occurred_at: datetime


@dataclass
class MonthState:
    base_micros: int = 0
    commission_micros: int = 0
    bonus_micros: int = 0
    tier: int = 0
    # customer -> units of the main meter this month; customers whose bonus was paid
    units: dict[str, Decimal] = field(default_factory=dict)
    high_usage_paid: set[str] = field(default_factory=set)

    @property
    def total_micros(self) -> int:
        return self.commission_micros + self.bonus_micros


@dataclass
class CustomerState:
    first_topup_month: str | None = None
    usage_months: set[str] = field(default_factory=set)
    loyalty_paid: bool = False


class ResellerBook:
    """One reseller's streaming commission state: months, customers, seen entries."""

    def __init__(self, reseller_id: str, plan: Plan) -> None:
        self.reseller_id = reseller_id
        self.plan = plan
        self.months: dict[str, MonthState] = {}
        self.customers: dict[str, CustomerState] = {}
        self._seen: dict[str, None] = {}

    def month(self, month: str) -> MonthState:
        return self.months.setdefault(month, MonthState())

    def apply(self, fact: Fact) -> list[CommissionEntry]:
        """The commission entries one fact makes (none for a duplicate or another kind)."""
        if fact.kind not in KINDS or fact.entry_id in self._seen:
            return []
        self._seen[fact.entry_id] = None
        if len(self._seen) > DEDUP_MAX:
            del self._seen[next(iter(self._seen))]
        month = self.plan.month_of(fact.occurred_at)
        customer = self.customers.setdefault(fact.customer_id, CustomerState())
        if fact.kind == "topup":
            return self._topup(fact, month, customer)
        sign = 1 if fact.kind == "usage" else -1
        out = self._accrue(fact, month, sign * fact.amount_micros)
        if fact.kind == "usage":
            customer.usage_months.add(month)
            out += self._high_usage(fact, month)
            out += self._loyalty(fact, customer)
        return out

    def _accrue(self, fact: Fact, month: str, delta: int) -> list[CommissionEntry]:
        state = self.month(month)
        base_after = state.base_micros + delta
        tier_after = self.plan.tier_of(base_after)
        out = []
        if tier_after != state.tier:
            restated = self.plan.at_rate(state.base_micros, tier_after)
            state.tier = tier_after
            out.append(self._entry(fact, month, "true_up", restated - state.commission_micros))
            state.commission_micros = restated
        target = self.plan.at_rate(base_after, tier_after)
        state.base_micros = base_after
        out.append(self._entry(fact, month, "accrual", target - state.commission_micros))
        state.commission_micros = target
        return out

    def _topup(self, fact: Fact, month: str, customer: CustomerState) -> list[CommissionEntry]:
        if customer.first_topup_month is not None:
            return []
        customer.first_topup_month = month
        out = [self._bonus(fact, month, "bonus_new_customer", self.plan.new_customer_bonus_micros)]
        return out + self._loyalty(fact, customer)

    def _loyalty(self, fact: Fact, customer: CustomerState) -> list[CommissionEntry]:
        first = customer.first_topup_month
        if first is None or customer.loyalty_paid:
            return []
        months = [add_months(first, n) for n in range(1, self.plan.loyalty_months + 1)]
        if not all(m in customer.usage_months for m in months):
            return []
        customer.loyalty_paid = True
        return [self._bonus(fact, months[-1], "bonus_loyalty", self.plan.loyalty_bonus_micros)]

    def _high_usage(self, fact: Fact, month: str) -> list[CommissionEntry]:
        if fact.meter != self.plan.high_usage_meter:
            return []
        state = self.month(month)
        units = state.units.get(fact.customer_id, Decimal(0)) + fact.quantity
        state.units[fact.customer_id] = units
        if units < self.plan.high_usage_units or fact.customer_id in state.high_usage_paid:
            return []
        state.high_usage_paid.add(fact.customer_id)
        return [self._bonus(fact, month, "bonus_high_usage", self.plan.high_usage_bonus_micros)]

    def _bonus(self, fact: Fact, month: str, kind: str, micros: int) -> CommissionEntry:
        self.month(month).bonus_micros += micros
        return self._entry(fact, month, kind, micros)

    def _entry(self, fact: Fact, month: str, kind: str, micros: int) -> CommissionEntry:
        state = self.month(month)
        return CommissionEntry(
            entry_id=f"{fact.entry_id}:{kind}",
            reseller_id=self.reseller_id,
            customer_id=fact.customer_id,
            month=month,
            kind=kind,
            amount_micros=micros,
            currency=self.plan.currency,
            base_micros=state.base_micros,
            tier=state.tier,
            rate=self.plan.tiers[state.tier].rate,
            source_entry_id=fact.entry_id,
            occurred_at=fact.occurred_at,
        )

    def apply_all(self, facts: Iterable[Fact]) -> list[CommissionEntry]:
        return [entry for fact in facts for entry in self.apply(fact)]

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
>>> from streambill.domain.money import round_micros
>>> book.month("2026-11").commission_micros, round_micros(Decimal("1100") * Decimal("0.275"))
(302500000, 302500000)
>>> book.apply(Fact("e2", "cus_1", "usage", 200_000_000, at))  # a duplicate changes nothing
[]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

from streambill.domain.money import MICROS_PER_UNIT, scale_micros
from streambill.errors import InvalidEvent

# How each ledger kind moves a month's base: usage adds, refunds and chargebacks take off,
# and their reversals (a refund that failed after it was debited, a dispute's funds
# reinstated) give back what those took. A top-up moves no base (it counts for bonuses).
BASE_SIGN: Final = {
    "usage": 1,
    "refund": -1,
    "chargeback": -1,
    "refund_reversal": 1,
    "chargeback_reversal": 1,
}
KINDS: Final = frozenset(BASE_SIGN) | {"topup"}
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
        """``base x rate`` of a tier, rounded half-even once (exact integer arithmetic).

        >>> Plan(currency="EUR").at_rate(1_000_000_001, 1)  # 275000000.275 -> ...000
        275000000
        """
        return scale_micros(base_micros, *_ratio(self.tiers[tier].rate))

    def month_of(self, at: datetime) -> str:
        """The calendar month (``YYYY-MM``) of an instant in the plan's time zone.

        >>> from datetime import UTC
        >>> Plan(currency="EUR").month_of(datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
        '2026-12'
        """
        # Every zone's offset is a multiple of 15 minutes, so all instants of one quarter
        # hour fall into the same month: cached per quarter hour (a hot path).
        return _month_of(self.timezone, int(at.timestamp()) // 900)

    def day_of(self, at: datetime) -> date:
        return at.astimezone(_zone(self.timezone)).date()


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@cache
def _ratio(rate: Decimal) -> tuple[int, int]:
    return rate.as_integer_ratio()


@lru_cache(maxsize=4096)
def _following(month: str, n: int) -> tuple[str, ...]:
    return tuple(add_months(month, k) for k in range(1, n + 1))


@lru_cache(maxsize=65536)
def _month_of(zone: str, quarter_hour: int) -> str:
    return datetime.fromtimestamp(quarter_hour * 900, _zone(zone)).strftime("%Y-%m")


def add_months(month: str, n: int) -> str:
    """The month ``n`` months after ``month``.

    >>> add_months("2026-11", 3)
    '2027-02'
    """
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) + n
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


class Fact(NamedTuple):
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
    # The customer's ledger ``seq``: when given, the book drops a fact whose seq it has
    # already passed (compact dedup that survives a restart); else it remembers entry ids.
    seq: int | None = None


@dataclass(slots=True)
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
    base_delta_micros: int = 0  # what this fact added to the month's base (accrual only)
    position: int = 0  # the book's running count of entries: orders a reseller's entries
    month_commission_micros: int = 0  # the month's commission and bonuses with this entry
    month_bonus_micros: int = 0


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
    last_seq: int = 0


class ResellerBook:
    """One reseller's streaming commission state: months, customers, seen entries."""

    def __init__(self, reseller_id: str, plan: Plan) -> None:
        self.reseller_id = reseller_id
        self.plan = plan
        self.months: dict[str, MonthState] = {}
        self.customers: dict[str, CustomerState] = {}
        self._seen: dict[str, None] = {}
        self.position = 0

    def month(self, month: str) -> MonthState:
        state = self.months.get(month)
        if state is None:
            state = self.months[month] = MonthState()
        return state

    def apply(self, fact: Fact, *, defer: bool = False) -> list[CommissionEntry]:
        """The commission entries one fact makes (none for a duplicate or another kind).

        With ``defer``, the fact's part of the month's base is left to the caller, who sums
        such parts and books them with :meth:`accrue` (the streaming agent does, once per
        slice of facts); bonuses and the customer's state are still handled here.
        """
        customer = self.customers.get(fact.customer_id)
        if fact.seq is not None:
            if customer is not None and fact.seq <= customer.last_seq:
                return []
        elif fact.entry_id in self._seen:
            return []
        else:
            self._seen[fact.entry_id] = None
            if len(self._seen) > DEDUP_MAX:
                del self._seen[next(iter(self._seen))]
        if customer is None:
            customer = self.customers[fact.customer_id] = CustomerState()
        if fact.seq is not None:
            customer.last_seq = fact.seq
        if fact.kind not in KINDS:
            return []
        month = self.plan.month_of(fact.occurred_at)
        if fact.kind == "topup":
            return self._topup(fact, month, customer)
        out = [] if defer else self._accrue(fact, month, BASE_SIGN[fact.kind] * fact.amount_micros)
        if fact.kind == "usage":
            customer.usage_months.add(month)
            out += self._high_usage(fact, month)
            out += self._loyalty(fact, customer)
        return out

    def accrue(
        self, source_id: str, month: str, delta_micros: int, at: datetime, customer_id: str = ""
    ) -> list[CommissionEntry]:
        """Book ``delta_micros`` more base for ``month`` (usage minus refunds of several facts,
        see ``apply(defer=True)``): a ``true_up`` if the tier changes, then the ``accrual``.
        Entry ids are ``<source_id>:<kind>``.

        >>> from datetime import UTC
        >>> book = ResellerBook("res_1", Plan(currency="EUR"))
        >>> at = datetime(2026, 11, 3, tzinfo=UTC)
        >>> [(e.entry_id, e.amount_micros) for e in book.accrue("s1", "2026-11", 1_200_000_000, at)]
        [('s1:accrual', 330000000)]
        """
        fact = Fact(source_id, customer_id, "usage", abs(delta_micros), at)
        return self._accrue(fact, month, delta_micros)

    def _accrue(self, fact: Fact, month: str, delta: int) -> list[CommissionEntry]:
        state = self.month(month)
        base_after = state.base_micros + delta
        tier_after = self.plan.tier_of(base_after)
        out = []
        # Each entry is made after the state it leads to, so it carries the month as it
        # stands once the entry counts (what a live ticker shows).
        if tier_after != state.tier:
            restated = self.plan.at_rate(state.base_micros, tier_after)
            change = restated - state.commission_micros
            state.tier, state.commission_micros = tier_after, restated
            if change:  # nothing to restate when the month had no base before
                out.append(self._entry(fact, month, "true_up", change))
        target = self.plan.at_rate(base_after, tier_after)
        change = target - state.commission_micros
        state.base_micros, state.commission_micros = base_after, target
        out.append(self._entry(fact, month, "accrual", change, delta))
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
        months = _following(first, self.plan.loyalty_months)
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

    def _entry(
        self, fact: Fact, month: str, kind: str, micros: int, base_delta: int = 0
    ) -> CommissionEntry:
        state = self.month(month)
        self.position += 1
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
            base_delta_micros=base_delta,
            position=self.position,
            month_commission_micros=state.commission_micros,
            month_bonus_micros=state.bonus_micros,
        )

    def apply_all(self, facts: Iterable[Fact]) -> list[CommissionEntry]:
        return [entry for fact in facts for entry in self.apply(fact)]

    # -- persistence: the agent checkpoints books as JSON-ready dicts --------------------

    def to_state(self) -> dict[str, object]:
        """Everything the book needs to go on after a restart (the plan is kept apart).

        >>> from datetime import UTC
        >>> book = ResellerBook("res_1", Plan(currency="EUR"))
        >>> at = datetime(2026, 11, 3, tzinfo=UTC)
        >>> _ = book.apply(Fact("e1", "c", "usage", 2_000_000_000, at, seq=1))
        >>> again = ResellerBook.from_state("res_1", Plan(currency="EUR"), book.to_state())
        >>> again.apply(Fact("e1", "c", "usage", 2_000_000_000, at, seq=1))  # seen before
        []
        >>> [e.amount_micros for e in again.apply(Fact("e2", "c", "usage", 1, at, seq=2))]
        [0]
        >>> again.month("2026-11").base_micros, again.position  # two accruals
        (2000000001, 2)
        """
        return {
            "position": self.position,
            "months": {
                name: {
                    "base": m.base_micros,
                    "commission": m.commission_micros,
                    "bonus": m.bonus_micros,
                    "tier": m.tier,
                    "units": {c: str(u) for c, u in m.units.items()},
                    "high_usage_paid": sorted(m.high_usage_paid),
                }
                for name, m in self.months.items()
            },
            "customers": {
                cid: [c.first_topup_month, sorted(c.usage_months), c.loyalty_paid, c.last_seq]
                for cid, c in self.customers.items()
            },
        }

    @classmethod
    def from_state(cls, reseller_id: str, plan: Plan, state: dict[str, Any]) -> ResellerBook:
        book = cls(reseller_id, plan)
        book.position = int(state.get("position", 0))
        for name, m in state.get("months", {}).items():
            book.months[name] = MonthState(
                base_micros=int(m["base"]),
                commission_micros=int(m["commission"]),
                bonus_micros=int(m["bonus"]),
                tier=int(m["tier"]),
                units={c: Decimal(u) for c, u in m["units"].items()},
                high_usage_paid=set(m["high_usage_paid"]),
            )
        for cid, (first, months, loyal, last_seq) in state.get("customers", {}).items():
            book.customers[cid] = CustomerState(first, set(months), bool(loyal), int(last_seq))
        return book

    def prune(self, oldest_month: str) -> None:
        """Forget months before ``oldest_month`` (long closed) and the usage months a
        customer's loyalty bonus no longer needs."""
        for name in [n for n in self.months if n < oldest_month]:
            del self.months[name]
        for customer in self.customers.values():
            if customer.loyalty_paid:
                customer.usage_months.clear()


def plan_document(plan: Plan) -> dict[str, Any]:
    """A plan as JSON (decimal strings in major units): what the API shows and stores.

    >>> doc = plan_document(Plan(currency="EUR"))
    >>> doc["tiers"][1], doc["new_customer_bonus"]
    ({'from': '1000', 'rate': '0.275'}, '5')
    >>> plan_from_document(doc, "EUR") == Plan(currency="EUR")
    True
    """
    return {
        "timezone": plan.timezone,
        "tiers": [{"from": _units(t.from_micros), "rate": str(t.rate)} for t in plan.tiers],
        "new_customer_bonus": _units(plan.new_customer_bonus_micros),
        "loyalty_bonus": _units(plan.loyalty_bonus_micros),
        "loyalty_months": plan.loyalty_months,
        "high_usage_bonus": _units(plan.high_usage_bonus_micros),
        "high_usage_meter": plan.high_usage_meter,
        "high_usage_units": str(plan.high_usage_units),
    }


def plan_from_document(
    doc: dict[str, Any] | None, currency: str, timezone: str | None = None
) -> Plan:
    """A plan from its JSON document; missing fields take the defaults. Raises
    :class:`InvalidPlan` (code ``invalid_plan``) for anything that is not a sane plan.

    >>> tiers = [{"from": "0", "rate": "0.2"}, {"from": "500", "rate": "0.3"}]
    >>> plan_from_document({"tiers": tiers}, "USD").tier_of(500_000_000)
    1
    >>> plan_from_document({"tiers": [{"from": "100", "rate": "0.2"}]}, "EUR")
    Traceback (most recent call last):
    ...
    streambill.domain.commissions.InvalidPlan: tiers: the first tier must start at 0
    """
    doc = dict(doc or {})
    default = Plan(currency=currency)
    try:
        zone = str(doc.get("timezone") or timezone or default.timezone)
        _zone(zone)
    except (ValueError, KeyError, OSError):
        raise InvalidPlan(f"timezone: unknown time zone {doc.get('timezone')!r}") from None
    tiers = default.tiers
    if "tiers" in doc:
        raw = doc["tiers"]
        if not isinstance(raw, list) or not raw or len(raw) > 20:
            raise InvalidPlan("tiers: a list of 1 to 20 {from, rate}")
        parsed = []
        for n, t in enumerate(raw):
            if not isinstance(t, dict):
                raise InvalidPlan(f"tiers[{n}]: want {{from, rate}}")
            floor = _parse_units(t.get("from"), f"tiers[{n}].from")
            rate = _decimal(t.get("rate"), f"tiers[{n}].rate")
            if not Decimal(0) <= rate <= Decimal(1):
                raise InvalidPlan(f"tiers[{n}].rate: a fraction between 0 and 1")
            parsed.append(Tier(floor, rate))
        if parsed[0].from_micros != 0:
            raise InvalidPlan("tiers: the first tier must start at 0")
        if any(b.from_micros <= a.from_micros for a, b in itertools.pairwise(parsed)):
            raise InvalidPlan("tiers: thresholds must increase")
        tiers = tuple(parsed)
    months = doc.get("loyalty_months", default.loyalty_months)
    if not isinstance(months, int) or isinstance(months, bool) or not 1 <= months <= 24:
        raise InvalidPlan("loyalty_months: an integer from 1 to 24")
    meter = doc.get("high_usage_meter", default.high_usage_meter)
    if not isinstance(meter, str) or not 1 <= len(meter) <= 64:
        raise InvalidPlan("high_usage_meter: a meter name")
    units = _decimal(doc.get("high_usage_units", default.high_usage_units), "high_usage_units")
    if units < 0:
        raise InvalidPlan("high_usage_units: must not be negative")

    def bonus(name: str, fallback: int) -> int:
        return _parse_units(doc[name], name) if name in doc else fallback

    return Plan(
        currency=currency,
        timezone=zone,
        tiers=tiers,
        new_customer_bonus_micros=bonus("new_customer_bonus", default.new_customer_bonus_micros),
        loyalty_bonus_micros=bonus("loyalty_bonus", default.loyalty_bonus_micros),
        loyalty_months=months,
        high_usage_bonus_micros=bonus("high_usage_bonus", default.high_usage_bonus_micros),
        high_usage_meter=meter,
        high_usage_units=units,
    )


class InvalidPlan(InvalidEvent):
    """A commission plan document that is not a sane plan."""

    code = "invalid_plan"


def _units(micros: int) -> str:
    return format(Decimal(micros).scaleb(-6).normalize(), "f")


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise InvalidPlan(f"{name}: a decimal string")
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        raise InvalidPlan(f"{name}: not a number: {value!r}") from None
    if not number.is_finite():
        raise InvalidPlan(f"{name}: not a number: {value!r}")
    return number


def _parse_units(value: object, name: str) -> int:
    number = _decimal(value, name)
    if number < 0 or number != number.quantize(Decimal("0.000001")) or number > 10**12:
        raise InvalidPlan(f"{name}: an amount >= 0 with at most 6 decimals")
    return int(number * MICROS_PER_UNIT)

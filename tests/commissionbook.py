"""Test support for commissions: a generated ledger of resellers' customers (several months,
month edges, a tier crossing, refunds, a chargeback, customers in another currency, replays),
reference rates for it, and the commission entries that ``ResellerBook`` makes of it, in the
``billing.commissions.v1`` shape (what the worker's agent emits)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from streambill.domain.commissions import CommissionEntry, Fact, Plan, ResellerBook
from streambill.domain.fx import RateTable
from streambill.domain.money import round_micros

T0 = datetime(2026, 9, 1, tzinfo=UTC)
KINDS = ("usage", "refund", "chargeback", "topup")


def reference_rates(start: date = date(2026, 8, 1), days: int = 240) -> RateTable:
    """Per working day (no rates at weekends: conversions fall back to Friday) USD and GBP
    per euro, moving a little every day so the day used matters."""
    table = RateTable()
    for n in range(days):
        day = start + timedelta(days=n)
        if day.weekday() < 5:
            table.add(day, "USD", Decimal("1.0500") + Decimal(n % 17) / 1000)
            table.add(day, "GBP", Decimal("0.8400") + Decimal(n % 11) / 1000)
    return table


@dataclass
class CommissionFeed:
    """One reseller's book fed with ledger entries (JSON dicts), as the agent would feed it:
    amounts converted at the day's rate in the reseller's time zone, facts in ledger order."""

    reseller_id: str
    plan: Plan
    rates: RateTable
    book: ResellerBook = field(init=False)
    # month -> [commission, bonus]: the running month totals each entry reports
    sums: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    emitted: list[dict[str, Any]] = field(default_factory=list)  # every entry, in order

    def __post_init__(self) -> None:
        self.book = ResellerBook(self.reseller_id, self.plan)

    def apply(self, ledger: dict[str, Any]) -> list[dict[str, Any]]:
        if ledger["reseller_id"] != self.reseller_id or ledger["kind"] not in KINDS:
            return []
        at = datetime.fromisoformat(ledger["occurred_at"])
        source = abs(int(ledger["amount_micros"]))
        fx: tuple[str, str] | None = None
        amount = source
        if ledger["kind"] != "topup" and ledger["currency"] != self.plan.currency:
            day = self.plan.day_of(at)
            conv = self.rates.convert(source, ledger["currency"], self.plan.currency, day)
            amount, fx = conv.micros, (str(conv.rate), conv.rate_date.isoformat())
        quantity = Decimal(ledger["quantity"]) if ledger.get("quantity") else Decimal(0)
        fact = Fact(
            ledger["entry_id"],
            ledger["customer_id"],
            ledger["kind"],
            amount,
            at,
            ledger.get("meter"),
            quantity,
            seq=int(ledger["seq"]),
        )
        entries = [self._json(e, ledger, source, fx) for e in self.book.apply(fact)]
        self.emitted += entries
        return entries

    def _json(
        self, e: CommissionEntry, ledger: dict[str, Any], source: int, fx: tuple[str, str] | None
    ) -> dict[str, Any]:
        sums = self.sums[e.month]
        sums[0 if e.kind in ("accrual", "true_up") else 1] += e.amount_micros
        return {
            "entry_id": e.entry_id,
            "reseller_id": e.reseller_id,
            "customer_id": e.customer_id,
            "month": e.month,
            "kind": e.kind,
            "amount_micros": e.amount_micros,
            "currency": e.currency,
            "base_micros": e.base_micros,
            "base_delta_micros": e.base_delta_micros,
            "tier": e.tier,
            "rate": str(e.rate),
            "position": e.position,
            "month_commission_micros": sums[0],
            "month_bonus_micros": sums[1],
            "customers": {},  # one fact's entry (the agent's accrual slices fill this)
            "facts": 1,
            "source_entry_id": e.source_entry_id,
            "source_kind": ledger["kind"],
            "source_amount_micros": source,
            "source_currency": ledger["currency"],
            "fx_rate": fx[0] if fx else None,
            "fx_date": fx[1] if fx else None,
            "occurred_at": e.occurred_at.isoformat(),
            "created_at": self.created_at.isoformat(),
        }

    def figures(self) -> dict[str, tuple[int, int, int]]:
        """month -> (base, commission, bonus) as the book has them."""
        return {
            m: (s.base_micros, s.commission_micros, s.bonus_micros)
            for m, s in self.book.months.items()
        }


@dataclass
class CustomerPlan:
    customer_id: str
    reseller_id: str | None
    currency: str
    first_topup: datetime
    unit_price: Decimal  # per call minute, in the customer's currency


def ledger_history(
    customers: list[CustomerPlan], *, months: int = 5, seed: int = 7, heavy: str | None = None
) -> list[dict[str, Any]]:
    """Each customer's ledger in seq order: its top-up, then usage on both meters over
    ``months`` months (some at a month's last hour and first hour in UTC, a few out of
    occurred_at order), refunds, a chargeback, a later second top-up, an adjustment. The
    ``heavy`` customer uses 12 x 50 call minutes in the second month (a tier crossing and
    the high-usage bonus)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for c in customers:
        times = [c.first_topup + timedelta(days=rng.uniform(1, 30 * months)) for _ in range(40)]
        for m in range(1, months + 1):  # month edges, in UTC: another month in most zones
            edge = _month_start(c.first_topup, m)
            times += [edge - timedelta(minutes=30), edge + timedelta(minutes=20)]
        times.sort()
        for i in rng.sample(range(len(times) - 1), 4):  # late events: applied out of order
            times[i], times[i + 1] = times[i + 1], times[i]
        rows: list[tuple[str, datetime, str | None, Decimal, int]] = [
            ("topup", c.first_topup, None, Decimal(0), 500_000_000)
        ]
        for at in times:
            meter = "call_minutes" if rng.random() < 0.8 else "sms"
            quantity = Decimal(rng.randint(1, 4000)) / 100
            rows.append(("usage", at, meter, quantity, -round_micros(quantity * c.unit_price)))
        if heavy == c.customer_id:
            start = _month_start(c.first_topup, 1) + timedelta(days=3)
            amount = -round_micros(50 * c.unit_price)
            for n in range(12):
                rows.append(
                    ("usage", start + timedelta(hours=n), "call_minutes", Decimal(50), amount)
                )
            # a large refund in the same month: the base may fall back a tier (a true-up down)
            rows.append(("refund", start + timedelta(days=1), None, Decimal(0), -1_300_000_000))
        second = c.first_topup + timedelta(days=45)
        rows += [
            ("refund", c.first_topup + timedelta(days=20), None, Decimal(0), -3_250_000),
            ("chargeback", c.first_topup + timedelta(days=50), None, Decimal(0), -1_000_001),
            ("topup", second, None, Decimal(0), 200_000_000),
            ("adjustment", second, None, Decimal(0), 7_000_000),
        ]
        out += [_ledger(c, seq, *row) for seq, row in enumerate(rows, start=1)]
    return out


def _month_start(at: datetime, n: int) -> datetime:
    index = at.year * 12 + at.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _ledger(
    c: CustomerPlan,
    seq: int,
    kind: str,
    at: datetime,
    meter: str | None,
    quantity: Decimal,
    amount: int,
) -> dict[str, Any]:
    return {
        "entry_id": f"led-{c.customer_id}-{seq}",
        "source_event_id": f"ev-{c.customer_id}-{seq}",
        "source_topic": "billing.usage.v1" if kind == "usage" else "billing.payments.v1",
        "customer_id": c.customer_id,
        "reseller_id": c.reseller_id,
        "kind": kind,
        "meter": meter,
        "quantity": str(quantity) if kind == "usage" else None,
        "amount_micros": amount,
        "balance_micros": 0,  # not what commissions read
        "currency": c.currency,
        "seq": seq,
        "occurred_at": at.isoformat(),
        "applied_at": (at + timedelta(milliseconds=5)).isoformat(),
    }

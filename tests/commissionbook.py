"""Test support for commissions: a generated ledger of resellers' customers (several months,
month edges, a tier crossing, refunds, a chargeback, customers in another currency, replays),
reference rates for it, and the commission entries the worker's agent emits for it on
``billing.commissions.v1``, made by the agent's own partition state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from streambill.domain.commissions import Plan, ResellerBook, plan_document
from streambill.domain.fx import RateTable
from streambill.domain.money import round_micros
from streambill.engine.balances import Message, Record
from streambill.engine.commissions import (
    FACTS,
    CommissionPartition,
    plan_marker,
    rates_marker,
    tick_marker,
)
from streambill.streams import topics

T0 = datetime(2026, 9, 1, tzinfo=UTC)


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
    """One reseller's ledger entries (JSON dicts) fed to a facts partition of the agent
    (:class:`~streambill.engine.commissions.CommissionPartition`) as the agent feeds it: the
    plan and the reference rates as markers first, then the facts in ledger order, each
    followed by a tick marker (one fact per accrual slice, so every accrual is one fact's)."""

    reseller_id: str
    plan: Plan
    rates: RateTable
    partition: CommissionPartition = field(init=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    emitted: list[dict[str, Any]] = field(default_factory=list)  # every entry, in order
    offset: int = 0  # the facts partition's next offset

    def __post_init__(self) -> None:
        self.partition = CommissionPartition(partition=0, partitions=1)
        doc = plan_document(self.plan)
        self._read(plan_marker(self.reseller_id, 1, self.plan.currency, doc, self.plan.timezone))
        self._read(rates_marker(self.rates.rows(), 0))

    @property
    def book(self) -> ResellerBook:
        return self.partition.books[self.reseller_id]

    def apply(self, ledger: dict[str, Any]) -> list[dict[str, Any]]:
        if ledger["reseller_id"] != self.reseller_id:
            return []
        fact = Message(FACTS, 0, self.reseller_id.encode(), orjson.dumps(ledger))
        entries = self._read(fact) + self._read(tick_marker(0))
        # A fact the agent parks (no rate for its day) would be a gap in the test's rates.
        assert not self.partition.parked, f"no reference rate for {ledger}"
        self.emitted += entries
        return entries

    def _read(self, message: Message) -> list[dict[str, Any]]:
        """The entries the partition emits for one record read back at the next offset."""
        record = Record(message.topic, 0, self.offset, message.key, message.value)
        self.offset += 1
        out = self.partition.handle(record, self.created_at.isoformat())
        assert all(m.topic == topics.COMMISSIONS for m in out), out  # no dead letters
        return [orjson.loads(m.value or b"") for m in out]

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

"""The demo's usage stream: business hours, log-normal calls, heavy users, manual top-ups.

Everything here is pure: the caller passes the clock value, so a seed and a session id give
the same events every time.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streambill.domain.money import to_micros
from streambill.domain.rating import rate_usage
from streambill.loadgen.population import DemoCustomer, Population, topup_payment
from streambill.streams.topics import PAYMENTS, USAGE

CALL_MEDIAN_MINUTES: Final = 2.5
CALL_SIGMA: Final = 0.9
CALL_TENTHS_MAX: Final = 2400  # 240 minutes
# Share of events per meter; every demo customer has a price for each.
METER_NAMES: Final = ("call_minutes", "sms", "ai_tokens_1k")
METER_WEIGHTS: Final = (85, 10, 5)
# The demo never goes silent: the offered rate never drops below this share of the target.
RATE_FACTOR_FLOOR: Final = 0.15
SHOWCASE_INTERVAL_S: Final = 8.0
# A customer without auto top-up tops up by hand when its approximate balance falls below this.
MANUAL_TOPUP_BELOW: Final = Decimal("2.00")
_FIXED_OFFSETS_H: Final = {"America/New_York": -5, "America/Chicago": -6, "America/Los_Angeles": -8}


@dataclass(frozen=True)
class Message:
    """One message to produce: topic, key and a JSON-able value."""

    topic: str
    key: str
    value: dict[str, Any]


@cache
def zone(name: str) -> tzinfo:
    """The IANA zone, or a fixed offset where the system has no tz database."""
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        hours = _FIXED_OFFSETS_H.get(name, 0 if name == "Europe/London" else 1)
        return timezone(timedelta(hours=hours))


def activity_factor(local: datetime) -> float:
    """Relative activity at a local wall-clock time: business hours dominate.

    >>> activity_factor(datetime(2026, 11, 25, 10, 0))  # Wednesday 10:00
    1.0
    >>> activity_factor(datetime(2026, 11, 28, 3, 0))  # Saturday 03:00
    0.03
    """
    hour = local.hour
    if local.weekday() < 5:
        if 8 <= hour < 18:
            return 1.0
        if hour == 7 or 18 <= hour < 20:
            return 0.35
        return 0.05
    return 0.12 if 9 <= hour < 18 else 0.03


def call_minutes(rng: random.Random) -> str:
    """A call length in minutes, log-normal with median 2.5, as a decimal string (0.1 steps)."""
    minutes = rng.lognormvariate(math.log(CALL_MEDIAN_MINUTES), CALL_SIGMA)
    tenths = max(1, min(CALL_TENTHS_MAX, round(minutes * 10)))
    return f"{tenths // 10}.{tenths % 10}"


def _quantity(meter: str, rng: random.Random) -> str:
    if meter == "call_minutes":
        return call_minutes(rng)
    if meter == "sms":
        return str(rng.choice((1, 1, 1, 2, 3)))
    thousands = max(1, min(999, round(rng.lognormvariate(math.log(3.0), 0.8) * 10)))
    return f"{thousands // 10}.{thousands % 10}"


class SpendTracker:
    """An approximate local balance per customer, to post a manual top-up when one runs low.

    Auto top-up customers are assumed to be topped up by the engine at their threshold.
    """

    def __init__(self, customers: Sequence[DemoCustomer]) -> None:
        self._balance_micros = {c.account_id: to_micros(c.initial_topup) for c in customers}

    def balance_micros(self, customer_id: str) -> int:
        return self._balance_micros[customer_id]

    def charge(self, customer: DemoCustomer, meter: str, quantity: str) -> Decimal | None:
        """Debit the charge; return the top-up amount to post by hand, if one is due."""
        charge = rate_usage(Decimal(quantity), customer.prices[meter])
        balance = self._balance_micros[customer.account_id] - charge
        topup: Decimal | None = None
        if customer.auto_topup:
            if balance < to_micros(customer.topup_threshold):
                balance += to_micros(customer.topup_amount)
        elif balance < to_micros(MANUAL_TOPUP_BELOW):
            topup = customer.topup_amount
            balance += to_micros(topup)
        self._balance_micros[customer.account_id] = balance
        return topup


class TrafficModel:
    """Draws usage events for a population; deterministic for (seed, session).

    ``session`` goes into every ``event_id``: a rerun of ``up`` starts a new session, so its
    calls are new calls rather than duplicates the worker would drop.
    """

    def __init__(
        self,
        population: Population,
        *,
        seed: int,
        session: str,
        showcase: Sequence[str] = (),
        showcase_interval_s: float = SHOWCASE_INTERVAL_S,
    ) -> None:
        self._customers = population.customers
        # Customers whose dashboards the demo shows (they have sign-ins): each gets a call at
        # least every ``showcase_interval_s``, whatever the hour in its time zone, so their
        # pages move within seconds of opening also at night.
        by_id = {c.account_id: c for c in population.customers}
        self._showcase = [by_id[i] for i in showcase if i in by_id]
        self._showcase_interval = timedelta(seconds=showcase_interval_s)
        self._showcase_due: dict[str, datetime] = {}
        self._rng = random.Random(f"traffic-{seed}-{session}")
        self._session = session
        self._seq = itertools.count(1)
        self._spend = SpendTracker(self._customers)
        self._cum_weights: list[float] = []
        self._weights_hour: datetime | None = None
        self._rate_factor = 1.0

    @property
    def spend(self) -> SpendTracker:
        return self._spend

    def rate_factor(self, now: datetime) -> float:
        """The share of the target rate to offer now (weighted activity, floored)."""
        self._refresh(now)
        return self._rate_factor

    def _refresh(self, now: datetime) -> None:
        hour = now.replace(minute=0, second=0, microsecond=0)
        if hour == self._weights_hour:
            return
        factors = [activity_factor(now.astimezone(zone(c.time_zone))) for c in self._customers]
        weights = [c.weight * f for c, f in zip(self._customers, factors, strict=True)]
        self._cum_weights = list(itertools.accumulate(weights))
        total_base = sum(c.weight for c in self._customers)
        self._rate_factor = max(RATE_FACTOR_FLOOR, self._cum_weights[-1] / total_base)
        self._weights_hour = hour

    def pick_customer(self, now: datetime) -> DemoCustomer:
        """A customer drawn by base weight times its local activity."""
        self._refresh(now)
        point = self._rng.random() * self._cum_weights[-1]
        index = bisect.bisect_right(self._cum_weights, point)
        return self._customers[min(index, len(self._customers) - 1)]

    def _due_showcase(self, now: datetime) -> DemoCustomer | None:
        for customer in self._showcase:
            due = self._showcase_due.get(customer.account_id)
            if due is None or now >= due:
                self._showcase_due[customer.account_id] = now + self._showcase_interval
                return customer
        return None

    def next_messages(self, now: datetime) -> list[Message]:
        """One usage event, and a manual top-up after it when that customer runs low."""
        customer = self._due_showcase(now) or self.pick_customer(now)
        seq = next(self._seq)
        meter = self._rng.choices(METER_NAMES, weights=METER_WEIGHTS)[0]
        quantity = _quantity(meter, self._rng)
        event_id = f"demo-{self._session}-{seq}"
        usage = {
            "event_id": event_id,
            "customer_id": customer.account_id,
            "meter": meter,
            "quantity": quantity,
            "occurred_at": now.isoformat(),
            "attributes": {"call_id": f"{self._session}-{seq}", "source": "demo"},
        }
        messages = [Message(USAGE, customer.account_id, usage)]
        topup = self._spend.charge(customer, meter, quantity)
        if topup is not None:
            payment = topup_payment(
                customer.account_id, customer.currency, topup, f"{event_id}-topup", now
            )
            messages.append(Message(PAYMENTS, customer.account_id, payment))
        return messages


class Pacer:
    """Turns elapsed time and a rate into a whole number of events due (credit carries over).

    >>> p = Pacer(start_s=0.0)
    >>> p.due(0.25, rate=10.0), p.due(0.30, rate=10.0), p.due(1.0, rate=10.0)
    (2, 1, 7)
    """

    def __init__(self, start_s: float, burst_max: int = 10_000) -> None:
        self._last_s = start_s
        self._credit = 0.0
        self._burst_max = burst_max

    def due(self, now_s: float, rate: float) -> int:
        self._credit += max(0.0, now_s - self._last_s) * rate
        self._last_s = now_s
        count = min(int(self._credit + 1e-9), self._burst_max)
        self._credit = min(self._credit - count, float(self._burst_max))
        return count

"""A synthetic population of AI-phone customers: calls, top-ups, and injected fraud.

Deterministic for a seed. Each customer has a daily level of call minutes (log-normal across
customers), a weekly shape (weekdays busy, weekends quiet, by how much varies), a daily
shape (business hours), a slow trend, German public holidays (quiet days), and noise (the
number of calls is Poisson, call lengths are gamma distributed). Fraud is injected and
labelled:

- **account takeover**: a burst of 30-80 calls within two hours to destinations the customer
  never called, at any hour;
- **long night calls**: a few calls of 1.5-4 hours between 01:00 and 05:00;
- **card testing**: 10-30 small top-ups (1.00-3.00) within minutes, most of them declined.

>>> pop = Population.generate(customers=3, seed=1)
>>> days = list(pop.days(date(2026, 1, 5), 2))
>>> len(days), sorted({c.customer_id for d in days for c in d.calls})
(2, ['gen_000', 'gen_001', 'gen_002'])
>>> all(c.minutes > 0 for d in days for c in d.calls)
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

# German nationwide public holidays 2025-2027 (fixed and Easter-dependent ones).
HOLIDAYS: Final = frozenset(
    date.fromisoformat(d)
    for d in [
        "2025-01-01",
        "2025-04-18",
        "2025-04-21",
        "2025-05-01",
        "2025-05-29",
        "2025-06-09",
        "2025-10-03",
        "2025-12-25",
        "2025-12-26",
        "2026-01-01",
        "2026-04-03",
        "2026-04-06",
        "2026-05-01",
        "2026-05-14",
        "2026-05-25",
        "2026-10-03",
        "2026-12-25",
        "2026-12-26",
        "2027-01-01",
        "2027-03-26",
        "2027-03-29",
        "2027-05-01",
        "2027-05-06",
        "2027-05-17",
        "2027-10-03",
        "2027-12-25",
        "2027-12-26",
    ]
)
COUNTRIES: Final = ("DE", "AT", "CH", "NL", "FR", "IT", "ES", "PL")
FRAUD_COUNTRIES: Final = ("NG", "PK", "VN", "CU", "SO", "KP")
# Share of business-hours calls per hour 0..23 (sums to 1).
_HOURS: Final = (
    (0.002,) * 7 + (0.03, 0.09, 0.12, 0.12, 0.11, 0.07, 0.1, 0.11, 0.1, 0.07, 0.03) + (0.01,) * 6
)
HOUR_SHARE: Final = tuple(h / sum(_HOURS) for h in _HOURS)


@dataclass(frozen=True)
class Call:
    customer_id: str
    at: datetime
    minutes: float
    country: str
    fraud: str | None = None  # the injected kind, None for a genuine call


@dataclass(frozen=True)
class Topup:
    customer_id: str
    at: datetime
    amount_micros: int
    succeeded: bool
    fraud: str | None = None


@dataclass
class Day:
    day: date
    calls: list[Call] = field(default_factory=list)
    topups: list[Topup] = field(default_factory=list)

    def minutes_by_customer(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for call in self.calls:
            out[call.customer_id] = out.get(call.customer_id, 0.0) + call.minutes
        return out


@dataclass(frozen=True)
class Profile:
    customer_id: str
    daily_minutes: float  # a weekday's expected minutes at the start
    weekend: float  # a weekend day's share of a weekday
    trend: float  # growth per week (0.01: +1% a week)
    call_minutes: float  # mean call length
    countries: tuple[str, ...]
    topup_micros: int


@dataclass
class Population:
    profiles: list[Profile]
    seed: int
    fraud_rate: float = 0.02  # chance per customer and week of an injected fraud episode

    @classmethod
    def generate(cls, customers: int, seed: int, fraud_rate: float = 0.02) -> Population:
        rng = random.Random(f"ml-population-{seed}")
        profiles = []
        for n in range(customers):
            profiles.append(
                Profile(
                    customer_id=f"gen_{n:03d}",
                    daily_minutes=math.exp(rng.gauss(math.log(60), 0.8)),
                    weekend=rng.uniform(0.1, 0.7),
                    trend=rng.gauss(0.005, 0.01),
                    call_minutes=rng.uniform(2.0, 6.0),
                    countries=tuple(rng.sample(COUNTRIES, rng.randint(1, 3))),
                    topup_micros=rng.choice((20, 50, 100)) * 1_000_000,
                )
            )
        return cls(profiles, seed, fraud_rate)

    def expected_minutes(self, profile: Profile, day: date, start: date) -> float:
        """The genuine minutes a customer is expected to call on ``day``."""
        weeks = (day - start).days / 7
        level = profile.daily_minutes * (1 + profile.trend) ** weeks
        if day in HOLIDAYS:
            return level * 0.15
        return level * (profile.weekend if day.weekday() >= 5 else 1.0)

    def days(self, start: date, count: int) -> Iterator[Day]:
        """``count`` days from ``start``: every customer's calls and top-ups, in time order."""
        for offset in range(count):
            day = start + timedelta(days=offset)
            rng = random.Random(f"{self.seed}-{day}")
            out = Day(day)
            for profile in self.profiles:
                self._genuine(rng, profile, day, start, out)
                if rng.random() < self.fraud_rate / 7:
                    self._fraud(rng, profile, day, out)
            out.calls.sort(key=lambda c: (c.at, c.customer_id))
            out.topups.sort(key=lambda t: (t.at, t.customer_id))
            yield out

    def _genuine(self, rng: random.Random, p: Profile, day: date, start: date, out: Day) -> None:
        expected = self.expected_minutes(p, day, start)
        calls = _poisson(rng, expected / p.call_minutes)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        spent = 0.0
        for _ in range(calls):
            hour = rng.choices(range(24), weights=HOUR_SHARE)[0]
            at = midnight + timedelta(hours=hour, seconds=rng.randrange(3600))
            minutes = max(0.1, rng.gammavariate(2.0, p.call_minutes / 2.0))
            spent += minutes
            out.calls.append(Call(p.customer_id, at, round(minutes, 2), rng.choice(p.countries)))
        # A top-up when the day's spend would have drained a typical balance.
        if spent and rng.random() < spent * 0.15 / (p.topup_micros / 1_000_000):
            at = midnight + timedelta(hours=rng.randint(8, 20), seconds=rng.randrange(3600))
            out.topups.append(Topup(p.customer_id, at, p.topup_micros, rng.random() > 0.03))

    def _fraud(self, rng: random.Random, p: Profile, day: date, out: Day) -> None:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        kind = rng.choice(("takeover", "night_calls", "card_testing"))
        if kind == "takeover":
            begin = midnight + timedelta(hours=rng.randint(0, 21))
            for _ in range(rng.randint(30, 80)):
                at = begin + timedelta(seconds=rng.randrange(7200))
                minutes = round(max(0.2, rng.gammavariate(2.0, 4.0)), 2)
                country = rng.choice(FRAUD_COUNTRIES)
                out.calls.append(Call(p.customer_id, at, minutes, country, kind))
        elif kind == "night_calls":
            for _ in range(rng.randint(1, 3)):
                at = midnight + timedelta(hours=rng.randint(1, 4), seconds=rng.randrange(3600))
                minutes = round(rng.uniform(90, 240), 2)
                out.calls.append(Call(p.customer_id, at, minutes, rng.choice(p.countries), kind))
        else:
            begin = midnight + timedelta(hours=rng.randint(0, 23))
            for _ in range(rng.randint(10, 30)):
                at = begin + timedelta(seconds=rng.randrange(600))
                amount = rng.randint(100, 300) * 10_000
                out.topups.append(Topup(p.customer_id, at, amount, rng.random() < 0.2, kind))


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal for large ones)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k

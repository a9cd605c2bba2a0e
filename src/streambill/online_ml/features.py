"""Per-customer rolling features for scoring one event at a time.

Each customer keeps a small state: exponentially decayed counts (calls and minutes over the
last hour and day, top-ups and failed payments), running mean and variance of its call
lengths and top-up amounts (Welford), and the destinations it has called. An event's
features describe it against that state, then the state learns the event. Everything is a
float in a known range or a ratio, so a min-max scaler can map it to [0, 1].

>>> from datetime import timedelta
>>> state = CustomerFeatures()
>>> at = datetime(2026, 3, 2, 10, tzinfo=UTC)
>>> for n in range(20):
...     _ = state.call(at + timedelta(minutes=30 * n), 3.0, "DE")
>>> night = state.call(datetime(2026, 3, 3, 3, tzinfo=UTC), 180.0, "NG")
>>> night["new_destination"], night["night"], night["length_z"] > 10
(1.0, 1.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final

HOUR_S: Final = 3600.0
DAY_S: Final = 86_400.0
Z_CAP: Final = 50.0
# The features of every event, in the order its dict holds them.
FEATURES: Final = (
    "calls_hour",
    "calls_day_ratio",
    "minutes_day",
    "length_z",
    "log_minutes",
    "hour_sin",
    "hour_cos",
    "night",
    "weekend",
    "new_destination",
    "new_destinations_day",
    "topups_hour",
    "failed_day",
    "is_payment",
    "amount_z",
)


@dataclass(slots=True)
class Decayed:
    """A count that halves every ``half_life_s`` seconds (an online sliding window)."""

    half_life_s: float
    value: float = 0.0
    at: float = 0.0

    def add(self, now: float, weight: float = 1.0) -> float:
        """The value after counting ``weight`` more at ``now`` (seconds)."""
        self.value = self.peek(now) + weight
        self.at = max(self.at, now)
        return self.value

    # Checkpoints pickle one of these per window and customer: plain tuples are fast.
    def __getstate__(self) -> tuple[float, float, float]:
        return (self.half_life_s, self.value, self.at)

    def __setstate__(self, state: tuple[float, float, float]) -> None:
        self.half_life_s, self.value, self.at = state

    def peek(self, now: float) -> float:
        if now <= self.at:
            return self.value
        return self.value * math.pow(0.5, (now - self.at) / self.half_life_s)


@dataclass(slots=True)
class Running:
    """Mean and variance, one value at a time (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def __getstate__(self) -> tuple[int, float, float]:
        return (self.n, self.mean, self.m2)

    def __setstate__(self, state: tuple[int, float, float]) -> None:
        self.n, self.mean, self.m2 = state

    def z(self, value: float) -> float:
        """How many standard deviations ``value`` is from the mean so far (capped)."""
        if self.n < 5:
            return 0.0
        std = math.sqrt(self.m2 / (self.n - 1)) or 1e-9
        return max(-Z_CAP, min(Z_CAP, (value - self.mean) / std))

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)


@dataclass(slots=True)
class CustomerFeatures:
    calls_hour: Decayed = field(default_factory=lambda: Decayed(HOUR_S))
    calls_day: Decayed = field(default_factory=lambda: Decayed(DAY_S))
    minutes_day: Decayed = field(default_factory=lambda: Decayed(DAY_S))
    new_destinations_day: Decayed = field(default_factory=lambda: Decayed(DAY_S))
    topups_hour: Decayed = field(default_factory=lambda: Decayed(HOUR_S))
    failed_day: Decayed = field(default_factory=lambda: Decayed(DAY_S))
    lengths: Running = field(default_factory=Running)
    amounts: Running = field(default_factory=Running)
    calls_seen: int = 0
    first_call_s: float | None = None
    destinations: set[str] = field(default_factory=set)

    # Checkpoints pickle one per customer; the generated slots state walks fields() each time.
    # Windows and running stats go in as their tuples (one object each, not three).
    def __getstate__(self) -> tuple[object, ...]:
        values = (getattr(self, name) for name in _SLOTS)
        return tuple(v.__getstate__() if isinstance(v, Decayed | Running) else v for v in values)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(_SLOTS, state, strict=True):
            kind = _NESTED.get(name)
            if kind is not None:
                nested = object.__new__(kind)
                nested.__setstate__(value)
                value = nested
            setattr(self, name, value)

    def call(self, at: datetime, minutes: float, destination: str) -> dict[str, float]:
        """Features of a call (usage event), then learn it."""
        now = at.timestamp()
        hour = at.astimezone(UTC).hour + at.minute / 60
        new = 1.0 if self.calls_seen >= 5 and destination not in self.destinations else 0.0
        features = {
            "calls_hour": self.calls_hour.add(now),
            "calls_day_ratio": self.calls_day.add(now) / (1.0 + self._usual_calls(now)),
            "minutes_day": math.log1p(self.minutes_day.add(now, minutes)),
            "length_z": self.lengths.z(minutes),
            "log_minutes": math.log1p(minutes),
            "hour_sin": math.sin(2 * math.pi * hour / 24),
            "hour_cos": math.cos(2 * math.pi * hour / 24),
            "night": 1.0 if hour < 5 else 0.0,
            "weekend": 1.0 if at.weekday() >= 5 else 0.0,
            "new_destination": new,
            "new_destinations_day": self.new_destinations_day.add(now, new),
            "topups_hour": self.topups_hour.peek(now),
            "failed_day": self.failed_day.peek(now),
            "is_payment": 0.0,
            "amount_z": 0.0,
        }
        self.lengths.add(minutes)
        self.calls_seen += 1
        if self.first_call_s is None:
            self.first_call_s = now
        self.destinations.add(destination)
        return features

    def topup(self, at: datetime, amount_micros: int, succeeded: bool) -> dict[str, float]:
        """Features of a top-up (payment event, declined ones too), then learn it."""
        features = self._payment(at, amount_micros, learn=True, succeeded=succeeded)
        self.amounts.add(amount_micros / 1_000_000)
        return features

    def peek_payment(self, at: datetime, amount_micros: int) -> dict[str, float]:
        """Features of another payment (a refund, a chargeback, an adjustment), learning
        nothing: they are not top-ups, so they do not teach what the customer's top-ups are."""
        return self._payment(at, abs(amount_micros), learn=False, succeeded=True)

    def _payment(
        self, at: datetime, amount_micros: int, *, learn: bool, succeeded: bool
    ) -> dict[str, float]:
        now = at.timestamp()
        hour = at.astimezone(UTC).hour + at.minute / 60
        amount = amount_micros / 1_000_000
        features = {
            "calls_hour": self.calls_hour.peek(now),
            "calls_day_ratio": self.calls_day.peek(now) / (1.0 + self._usual_calls(now)),
            "minutes_day": math.log1p(self.minutes_day.peek(now)),
            "length_z": 0.0,
            "log_minutes": 0.0,
            "hour_sin": math.sin(2 * math.pi * hour / 24),
            "hour_cos": math.cos(2 * math.pi * hour / 24),
            "night": 1.0 if hour < 5 else 0.0,
            "weekend": 1.0 if at.weekday() >= 5 else 0.0,
            "new_destination": 0.0,
            "new_destinations_day": self.new_destinations_day.peek(now),
            "topups_hour": self.topups_hour.add(now) if learn else self.topups_hour.peek(now),
            "failed_day": (
                self.failed_day.add(now, 0.0 if succeeded else 1.0)
                if learn
                else self.failed_day.peek(now)
            ),
            "is_payment": 1.0,
            "amount_z": self.amounts.z(amount),
        }
        return features

    def _usual_calls(self, now: float) -> float:
        """The customer's usual calls in a day's decayed window (which holds about 1.44
        days of calls), from its history so far."""
        if self.first_call_s is None:
            return 0.0
        days = max(1.0, (now - self.first_call_s) / DAY_S)
        return 1.44 * self.calls_seen / days


_SLOTS: Final = tuple(f.name for f in fields(CustomerFeatures))
_NESTED: Final[dict[str, type[Decayed] | type[Running]]] = {
    f.name: Decayed if f.type == "Decayed" else Running
    for f in fields(CustomerFeatures)
    if f.type in ("Decayed", "Running")
}

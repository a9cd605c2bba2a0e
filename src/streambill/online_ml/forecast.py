"""A customer's daily usage, learned online one day at a time, forecast a week ahead.

Additive Holt-Winters with a weekly season, one update per day: a level, a (slow) trend and
a shift per weekday. River's ``time_series.HoltWinters`` was tried first and left: it starts
its trend from the day-to-day differences of the first week (a weekday/weekend customer
looks like it is collapsing) and seeds an additive season with ratios, so its forecasts
after six clean weeks were still off by half. This model starts from two full weeks (the
trend from week over week, the season from each weekday's deviation) and is small enough to
checkpoint as a handful of floats.

Public holidays are not days of the usual week: on a holiday the model learns what it would
have expected instead of the (low) figure, and keeps a holiday factor of its own (a moving
average of holiday / expected) that scales the forecast of a holiday ahead.

>>> from datetime import date, timedelta
>>> model = DailyUsage()
>>> start = date(2026, 6, 1)  # a Monday
>>> for n in range(42):
...     day = start + timedelta(days=n)
...     model.learn_day(day, 20.0 if day.weekday() >= 5 else 100.0)
>>> [round(v) for v in model.forecast(start + timedelta(days=42), 7)]
[100, 100, 100, 100, 100, 20, 20]
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Final

from streambill.online_ml.generator import HOLIDAYS

SEASON: Final = 7


class DailyUsage:
    """One customer's daily units: ``learn_day`` in order, ``forecast`` from a day on."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.02, gamma: float = 0.3) -> None:
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.level = 0.0
        self.trend = 0.0
        self.season = [0.0] * SEASON  # by weekday, Monday 0
        self.holiday_factor = 0.2
        self.days = 0
        self.last_day: date | None = None
        self._first: list[tuple[date, float]] = []  # the first two weeks, to start from

    @property
    def ready(self) -> bool:
        return not self._first and self.days >= 2 * SEASON

    def learn_day(self, day: date, units: float) -> None:
        """Learn the units of ``day`` (days in order; a skipped day counts as 0)."""
        if self.last_day is not None:
            if day <= self.last_day:
                return  # already learned
            for n in range(1, (day - self.last_day).days):
                self._learn(self.last_day + timedelta(days=n), 0.0)
        self._learn(day, units)
        self.last_day = day

    def _learn(self, day: date, units: float) -> None:
        self.days += 1
        if self.days <= 2 * SEASON:
            self._first.append((day, units))
            if self.days == 2 * SEASON:
                self._start()
            return
        expected = self._expect(day, 1)
        if day in HOLIDAYS:
            if expected > 0:
                ratio = min(units / expected, 2.0)
                self.holiday_factor += 0.3 * (ratio - self.holiday_factor)
            units = expected
        w = day.weekday()
        level = self.alpha * (units - self.season[w]) + (1 - self.alpha) * (self.level + self.trend)
        self.trend = self.beta * (level - self.level) + (1 - self.beta) * self.trend
        self.season[w] = self.gamma * (units - level) + (1 - self.gamma) * self.season[w]
        self.level = level

    def _start(self) -> None:
        # Holidays in the first weeks count as their usual weekday's mean would.
        values = [u for _, u in self._first]
        first, second = values[:SEASON], values[SEASON:]
        self.level = sum(second) / SEASON
        self.trend = (sum(second) - sum(first)) / SEASON / SEASON
        mean = sum(values) / len(values)
        shifts: list[list[float]] = [[] for _ in range(SEASON)]
        for day, units in self._first:
            if day not in HOLIDAYS:
                shifts[day.weekday()].append(units - mean)
        self.season = [sum(s) / len(s) if s else 0.0 for s in shifts]
        self._first = []

    def _expect(self, day: date, steps: int) -> float:
        return self.level + steps * self.trend + self.season[day.weekday()]

    def forecast(self, first: date, horizon: int = 7) -> list[float]:
        """Units for ``horizon`` days from ``first`` (usually the day after the last learned
        one); never negative. Before two weeks are learned: their mean."""
        if not self.ready or self.last_day is None:
            known = [u for _, u in self._first]
            mean = sum(known) / len(known) if known else 0.0
            return [mean] * horizon
        out = []
        for n in range(horizon):
            day = first + timedelta(days=n)
            value = max(self._expect(day, (day - self.last_day).days), 0.0)
            out.append(value * self.holiday_factor if day in HOLIDAYS else value)
        return out

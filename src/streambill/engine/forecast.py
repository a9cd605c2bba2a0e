"""The forecast agent's state: each customer's daily usage model and what follows from it
(pure: no I/O).

Ledger entries go in, in the order of the customer's ``seq`` (a repeated or older entry is
ignored, so a replay after a crash changes nothing). Usage entries add their quantity to the
customer's current day (UTC, by ``occurred_at``); when a later day starts, the finished day
is learned by its :class:`~streambill.online_ml.forecast.DailyUsage` model. Every entry moves
the balance the forecast starts from.

:meth:`ForecastBook.forecast` answers, for one customer at its latest event time:

- ``daily_units``: units for today and the six days after (the model's forecast; until it has
  learned a day, today's pace so far, extrapolated to a whole day);
- ``depletion_at``: when the balance runs out if usage follows that forecast, charged at the
  customer's average price per unit so far (today: what the forecast still expects after
  what was used; beyond the week: the week's mean pace, up to a year; None: never);
- ``recommended_topup_micros``: what brings the balance to the forecast spend of the next
  seven days, rounded up to a whole :data:`TOPUP_STEP_MICROS` (None when the balance covers
  the week).

A ``predicted_depletion`` alert is due when the balance is positive and runs out sooner than
the horizon; at most one per customer per day (the id names the day).

>>> from datetime import UTC, datetime, timedelta
>>> book = ForecastBook()
>>> at = datetime(2026, 6, 1, 12, tzinfo=UTC)
>>> seq = 0
>>> for day in range(21):  # 100 units a day at 0.10: 10.00 a day
...     seq += 1
...     _ = book.entry(Entry("c1", seq, "usage", 100_000_000, -10_000_000, 45_000_000,
...                      "EUR", at + timedelta(days=day)))
>>> view = book.forecast("c1")
>>> [round(u) for u in view.daily_units]
[100, 100, 100, 100, 100, 100, 100]
>>> view.depletion_at.isoformat()  # today's 100 are used; 45.00 last 4.5 days from midnight
'2026-06-26T12:00:00+00:00'
>>> view.recommended_topup_micros  # six more days * 10.00 - 45.00
15000000
>>> book.alert("c1", view, horizon_s=72 * 3600) is None  # 5 days left: no alert
True
>>> book.alert("c1", view, horizon_s=6 * 86400)["kind"]
'predicted_depletion'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, NamedTuple

from streambill.domain.money import format_micros
from streambill.online_ml.forecast import DailyUsage

DAY_S: Final = 86_400
HORIZON_DAYS: Final = 7
TOPUP_STEP_MICROS: Final = 5_000_000
MAX_DEPLETION_DAYS: Final = 365
MIN_PACE_S: Final = 3600  # a first day's pace is measured over at least an hour


class Entry(NamedTuple):
    """What the forecast needs of a ledger entry; quantities in micro-units."""

    customer_id: str
    seq: int
    kind: str
    quantity_micros: int
    amount_micros: int
    balance_micros: int
    currency: str
    occurred_at: datetime


class Forecast(NamedTuple):
    customer_id: str
    currency: str
    daily_units: list[float]
    balance_micros: int
    depletion_at: datetime | None
    recommended_topup_micros: int | None
    days_learned: int
    at: datetime


@dataclass  # no slots: a plain __dict__ pickles in C, four times faster for a checkpoint
class _Customer:
    currency: str
    model: DailyUsage = field(default_factory=DailyUsage)
    seq: int = 0
    balance_micros: int = 0
    day: date | None = None
    day_units_micros: int = 0
    first_at: datetime | None = None  # the first usage of the customer's current day
    latest_at: datetime | None = None
    units_micros: int = 0  # all usage so far, for the average price per unit
    spent_micros: int = 0
    alerted_day: date | None = None


class ForecastBook:
    def __init__(self) -> None:
        self.customers: dict[str, _Customer] = {}
        self.entries = 0

    def entry(self, e: Entry) -> bool:
        """Apply one ledger entry; False when it was seen already."""
        state = self.customers.get(e.customer_id)
        if state is None:
            state = self.customers[e.customer_id] = _Customer(e.currency)
        if e.seq <= state.seq:
            return False
        state.seq = e.seq
        state.balance_micros = e.balance_micros
        state.currency = e.currency
        self.entries += 1
        at = e.occurred_at
        if state.latest_at is None or at > state.latest_at:
            state.latest_at = at
        if e.kind != "usage":
            return True
        state.units_micros += e.quantity_micros
        state.spent_micros -= e.amount_micros
        day = at.astimezone(UTC).date()
        if state.day is None:
            state.day, state.first_at = day, at
        elif day > state.day:
            state.model.learn_day(state.day, state.day_units_micros / 1_000_000)
            state.day, state.day_units_micros, state.first_at = day, 0, at
        elif day < state.day:
            return True  # a late event of a day already learned: its money counts, not its units
        state.day_units_micros += e.quantity_micros
        return True

    def forecast(self, customer_id: str) -> Forecast | None:
        state = self.customers.get(customer_id)
        if state is None or state.latest_at is None:
            return None
        now = state.latest_at
        today = now.astimezone(UTC).date()
        used_today = state.day_units_micros / 1_000_000 if state.day == today else 0.0
        units = self._daily_units(state, now, today, used_today)
        depletion = None
        recommended = None
        if state.units_micros > 0 and any(units):
            start_of_today = datetime.combine(today, time(), tzinfo=UTC)
            rest_of_today_s = max((start_of_today - now).total_seconds() + DAY_S, 1.0)
            expected_today = max(units[0] - used_today, 0.0)
            segments = [(now, rest_of_today_s, self._spend_micros(state, expected_today))]
            for n in range(1, HORIZON_DAYS):
                begins = start_of_today + timedelta(days=n)
                segments.append((begins, DAY_S, self._spend_micros(state, units[n])))
            week_micros = sum(spend for _, _, spend in segments)
            depletion = _depletion(
                state.balance_micros, segments, self._spend_micros(state, sum(units))
            )
            short = week_micros - state.balance_micros
            if short > 0:
                recommended = -(-short // TOPUP_STEP_MICROS) * TOPUP_STEP_MICROS
        return Forecast(
            customer_id,
            state.currency,
            units,
            state.balance_micros,
            depletion,
            recommended,
            state.model.days,
            now,
        )

    @staticmethod
    def _spend_micros(state: _Customer, units: float) -> int:
        """What ``units`` cost at the customer's average price so far, in integer micros (the
        forecast units become micro-units first; the rest is integer arithmetic)."""
        return round(units * 1_000_000) * state.spent_micros // state.units_micros

    def _daily_units(
        self, state: _Customer, now: datetime, today: date, used_today: float
    ) -> list[float]:
        model = state.model
        if model.days > 0:
            return model.forecast(today, HORIZON_DAYS)
        if state.first_at is None or used_today <= 0:
            return [0.0] * HORIZON_DAYS
        elapsed = max((now - state.first_at).total_seconds(), MIN_PACE_S)
        pace = used_today * DAY_S / elapsed
        return [pace] * HORIZON_DAYS

    def alert(self, customer_id: str, view: Forecast, horizon_s: int) -> dict[str, Any] | None:
        """A ``predicted_depletion`` alert when it is due (and remember that it went out)."""
        state = self.customers[customer_id]
        if view.depletion_at is None or view.balance_micros <= 0:
            return None
        left_s = (view.depletion_at - view.at).total_seconds()
        day = view.at.astimezone(UTC).date()
        if left_s >= horizon_s or state.alerted_day == day:
            return None
        state.alerted_day = day
        details: dict[str, Any] = {
            "depletion_at": view.depletion_at.isoformat(),
            "hours_left": int(left_s // 3600),
            "balance_micros": view.balance_micros,
            "currency": view.currency,
            "daily_units": [round(u, 3) for u in view.daily_units],
        }
        if view.recommended_topup_micros is not None:
            details["recommended_topup_micros"] = view.recommended_topup_micros
            details["recommended_topup"] = format_micros(view.recommended_topup_micros)
        return {
            "alert_id": f"predicted_depletion:{customer_id}:{day.isoformat()}",
            "customer_id": customer_id,
            "kind": "predicted_depletion",
            "details": details,
        }


def _depletion(
    balance_micros: int, segments: list[tuple[datetime, float, int]], week_micros: int
) -> datetime | None:
    """When ``balance_micros`` is used up by ``segments`` (start, seconds, spend in micros),
    spent evenly within each; after them, at the pace of ``week_micros`` a week."""
    left = balance_micros
    if left <= 0:
        return segments[0][0]
    for begins, seconds, spend in segments:
        if spend >= left:
            return begins + timedelta(seconds=seconds * left / spend)
        left -= spend
    if week_micros <= 0:
        return None
    begins, seconds, _ = segments[-1]
    end = begins + timedelta(seconds=seconds)
    days = left * HORIZON_DAYS / week_micros
    if days > MAX_DEPLETION_DAYS:
        return None
    return end + timedelta(days=days)

"""When an auto top-up may charge: pure rules over one customer's auto top-up state.

The agent asks :func:`decide` for every ledger entry whose balance is below the customer's
threshold, with the customer's state row locked; it charges only on :class:`Charge`.

>>> from datetime import UTC, datetime, timedelta
>>> limits = Limits(cooldown_s=60, daily_max=2, backoff_s=900, max_failures=3)
>>> now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
>>> fresh = State(next_number=1)
>>> decide(fresh, seq=7, balance_micros=4_000_000, threshold_micros=5_000_000, now=now,
...        limits=limits)
Charge(number=1)
>>> decide(fresh, seq=7, balance_micros=5_000_000, threshold_micros=5_000_000, now=now,
...        limits=limits).reason
'above_threshold'
>>> decide(State(next_number=2, in_flight="at_1"), seq=8, balance_micros=0,
...        threshold_micros=5_000_000, now=now, limits=limits).reason
'in_flight'
>>> decide(State(next_number=2, armed_after_seq=7), seq=7, balance_micros=0,
...        threshold_micros=5_000_000, now=now, limits=limits).reason
'stale'
>>> recent = State(next_number=2, armed_after_seq=7, last_attempt_at=now - timedelta(seconds=30))
>>> skip = decide(recent, seq=9, balance_micros=0, threshold_micros=5_000_000, now=now,
...               limits=limits)
>>> skip.reason, skip.retry_at == now + timedelta(seconds=30)
('cooldown', True)
>>> capped = State(next_number=3, day="2026-11-27", day_count=2)
>>> decide(capped, seq=9, balance_micros=0, threshold_micros=5_000_000, now=now,
...        limits=limits).retry_at
datetime.datetime(2026, 11, 28, 0, 0, tzinfo=datetime.timezone.utc)
>>> [backoff(n, limits).total_seconds() for n in (1, 2, 3)]
[900.0, 1800.0, 3600.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Final

from streambill.domain.money import MICROS_PER_UNIT, to_micros
from streambill.errors import InvalidEvent

# Decimals of each currency's minor unit (what Stripe charges in).
MINOR_DIGITS: Final = {"EUR": 2, "USD": 2, "GBP": 2}


@dataclass(frozen=True)
class Limits:
    cooldown_s: float
    daily_max: int
    backoff_s: float
    max_failures: int


@dataclass(frozen=True)
class State:
    """What :func:`decide` reads of a customer's ``autotopup_states`` row."""

    next_number: int
    in_flight: str | None = None
    armed_after_seq: int = 0
    consecutive_failures: int = 0
    backoff_until: datetime | None = None
    last_attempt_at: datetime | None = None
    day: str | None = None
    day_count: int = 0
    disabled: bool = False


@dataclass(frozen=True)
class Charge:
    number: int


@dataclass(frozen=True)
class Skip:
    reason: str
    # When the answer may change by itself (cooldown, backoff, the daily cap); None: only
    # a new event can change it.
    retry_at: datetime | None = None


def day_of(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


def decide(
    state: State,
    *,
    seq: int,
    balance_micros: int,
    threshold_micros: int,
    now: datetime,
    limits: Limits,
) -> Charge | Skip:
    """Charge the customer's next top-up, or why not.

    ``seq`` and ``balance_micros`` come from the ledger entry being looked at. Entries at or
    below ``armed_after_seq`` were already covered by an earlier decision or credit (a
    duplicate, or an older entry delivered late): they never trigger.
    """
    if balance_micros >= threshold_micros:
        return Skip("above_threshold")
    if state.disabled:
        return Skip("disabled")
    if state.in_flight is not None:
        return Skip("in_flight")
    if seq <= state.armed_after_seq:
        return Skip("stale")
    if state.backoff_until is not None and now < state.backoff_until:
        return Skip("backoff", state.backoff_until)
    if state.last_attempt_at is not None:
        ready_at = state.last_attempt_at + timedelta(seconds=limits.cooldown_s)
        if now < ready_at:
            return Skip("cooldown", ready_at)
    today = day_of(now)
    if state.day == today and state.day_count >= limits.daily_max:
        tomorrow = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)
        return Skip("daily_cap", tomorrow)
    return Charge(state.next_number)


def backoff(failures: int, limits: Limits) -> timedelta:
    """The wait after the ``failures``-th decline in a row: the base, doubling each time."""
    return timedelta(seconds=limits.backoff_s * 2 ** max(0, failures - 1))


def chargeable(settings: Mapping[str, Any], currency: str) -> tuple[int, int] | str:
    """(threshold, amount) in micros from an account's ``auto_topup``, or why it cannot be
    charged: an amount that is not a whole number of the currency's minor units, or is not
    a positive decimal, is a configuration error (the api refuses both), never a crash.

    >>> chargeable({"threshold": "5.00", "amount": "20.00"}, "EUR")
    (5000000, 20000000)
    >>> chargeable({"threshold": "5.00", "amount": "20.005"}, "EUR")
    'amount 20.005 is not a whole number of EUR minor units'
    >>> chargeable({"threshold": "x", "amount": "20"}, "EUR")
    "threshold 'x' is not an amount"
    """
    values = []
    for name in ("threshold", "amount"):
        raw = settings.get(name, "0")
        try:
            micros = to_micros(str(raw), field=name)
        except InvalidEvent:
            return f"{name} {raw!r} is not an amount"
        digits = MINOR_DIGITS.get(currency.upper())
        if digits is None:
            return f"currency {currency!r} is not billed in"
        if micros < 0 or micros % (MICROS_PER_UNIT // 10**digits):
            return f"{name} {raw} is not a whole number of {currency.upper()} minor units"
        values.append(micros)
    if values[1] <= 0:
        return "amount must be > 0"
    return values[0], values[1]

"""Calendar months (``YYYY-MM``) in a reseller's time zone: when one ends, when it may close.

A month closes ``grace`` after it ended where the reseller is, so commission entries of its
last hours (and the ledger's stragglers) are in ClickHouse before its statement is written.

>>> month_end("2026-11", "Europe/Berlin").astimezone(UTC).isoformat()
'2026-11-30T23:00:00+00:00'
>>> closable_at("2026-10", "America/New_York", timedelta(days=3)).isoformat()  # DST ends Nov 1
'2026-11-04T04:00:00+00:00'
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from streambill.domain.commissions import add_months
from streambill.errors import InvalidEvent

MONTH_PATTERN: Final = r"^\d{4}-(0[1-9]|1[0-2])$"
_MONTH: Final = re.compile(MONTH_PATTERN)


def check_month(month: str) -> str:
    """A valid ``YYYY-MM`` (years 2000..2999) or :class:`InvalidEvent` ``invalid_request``.

    >>> check_month("2026-11")
    '2026-11'
    >>> check_month("2026-13")
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: month: want YYYY-MM, got '2026-13'
    >>> check_month("2026-11\\n")  # the whole string: ``$`` alone would allow a newline
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: month: want YYYY-MM, got '2026-11\\n'
    """
    if (
        not isinstance(month, str)
        or not _MONTH.fullmatch(month)
        or not "2000" <= month[:4] <= "2999"
    ):
        raise InvalidEvent(f"month: want YYYY-MM, got {month!r}", code="invalid_request")
    return month


def month_start(month: str, timezone: str) -> datetime:
    """The first instant of ``month`` in ``timezone`` (aware)."""
    return datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=ZoneInfo(timezone))


def month_end(month: str, timezone: str) -> datetime:
    """The first instant after ``month`` in ``timezone`` (aware)."""
    return month_start(add_months(month, 1), timezone)


def closable_at(month: str, timezone: str, grace: timedelta) -> datetime:
    """The month's end plus ``grace`` of elapsed time (in UTC: adding to a zoned time would
    add wall-clock time, an hour off across a DST change), as an aware UTC datetime."""
    return month_end(month, timezone).astimezone(UTC) + grace


def month_of(at: datetime, timezone: str) -> str:
    """The month of an instant in ``timezone``.

    >>> from datetime import UTC
    >>> month_of(datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "Europe/Berlin")
    '2026-12'
    """
    return at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def last_closable(now: datetime, timezone: str, grace: timedelta) -> str:
    """The latest month whose close time has passed at ``now``.

    >>> from datetime import UTC
    >>> last_closable(datetime(2026, 12, 4, 0, 0, tzinfo=UTC), "Europe/Berlin", timedelta(days=3))
    '2026-11'
    >>> last_closable(datetime(2026, 12, 3, 22, 0, tzinfo=UTC), "Europe/Berlin", timedelta(days=3))
    '2026-10'
    """
    # ``now - grace`` lies in the month that follows the last closable one (it is at or after
    # that month's end, and before its own end).
    return add_months(month_of(now - grace, timezone), -1)


def months_between(first: str, last: str, limit: int) -> list[str]:
    """``first`` .. ``last`` inclusive, at most ``limit`` of them (the latest).

    >>> months_between("2026-11", "2027-02", 10)
    ['2026-11', '2026-12', '2027-01', '2027-02']
    >>> months_between("2026-11", "2027-02", 2)
    ['2027-01', '2027-02']
    """
    out: list[str] = []
    month = last
    while month >= first and len(out) < limit:
        out.append(month)
        month = add_months(month, -1)
    return out[::-1]

"""Reads for the dashboards: a customer's monthly statements, and activity and revenue
figures of a reseller and of the platform.

Statements read ``ledger`` with replays collapsed (one row per ``entry_id``, grouped, its
earliest ``applied_at``: a replay may carry a later wall-clock time). A month is the calendar
month, in the customer's time zone, in which an entry was *posted* (``applied_at``), like a
bank statement: the entries of one month are then a contiguous run of ``seq``, so its opening
balance (before its first entry) and closing balance (after its last) come from the ledger's
own balance chain, and :func:`check_statement` can hold them against the sums of the
movements. (Usage charts bucket by ``occurred_at``; the two differ by the seconds an event
takes to be applied.)

Activity and revenue read the usage rollups (``usage_per_hour``, ``usage_per_day``): a
SummingMergeTree, read with ``sum() ... GROUP BY``. Revenue is usage spend (what customers'
balances were charged), in micros per currency; never converted, never a float.

Every query function takes the blocking clickhouse-connect client first (the api runs them
through ``AsyncClickHouse.run``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

from clickhouse_connect.driver.client import Client

from streambill.analytics.rows import utc
from streambill.errors import check

# Movements by kind: topup, usage, refund + chargeback, and every other kind (adjustment,
# and any kind added later) as an adjustment, so the movements always add up to the month.
# One row per entry_id (a replay is collapsed), posted at its first application.
_ENTRIES: Final = """
SELECT entry_id, any(kind) AS kind, any(meter) AS meter, any(quantity) AS quantity,
       any(amount_micros) AS amount_micros, any(balance_micros) AS balance_micros,
       any(seq) AS seq, min(applied_at) AS posted_at
FROM ledger WHERE customer_id = {c:String} GROUP BY entry_id
"""
_MONTHS_SQL: Final = f"""
SELECT toYYYYMM(posted_at, {{tz:String}}) AS month,
       argMin(balance_micros - amount_micros, seq), argMax(balance_micros, seq),
       sumIf(amount_micros, kind = 'topup'),
       sumIf(amount_micros, kind = 'usage'),
       sumIf(amount_micros, kind IN ('refund', 'chargeback', 'refund_reversal',
                                     'chargeback_reversal')),
       sumIf(amount_micros, kind NOT IN ('topup', 'usage', 'refund', 'chargeback',
                                         'refund_reversal', 'chargeback_reversal')),
       count(), min(seq), max(seq)
FROM ({_ENTRIES})
GROUP BY month ORDER BY month DESC
"""
_LINES_SQL: Final = f"""
SELECT kind, meter, sum(quantity), sum(amount_micros), count()
FROM ({_ENTRIES})
WHERE toYYYYMM(posted_at, {{tz:String}}) = {{m:UInt32}}
GROUP BY kind, meter ORDER BY kind, meter
"""


def month_text(yyyymm: int) -> str:
    """``YYYY-MM`` of ClickHouse's ``toYYYYMM``.

    >>> month_text(202611), month_number("2026-11")
    ('2026-11', 202611)
    """
    return f"{yyyymm // 100:04d}-{yyyymm % 100:02d}"


def month_number(month: str) -> int:
    return int(month[:4]) * 100 + int(month[5:7])


@dataclass(frozen=True)
class StatementMonth:
    """One month of a customer's account: balances and movements in micros. Usage and
    refunds (with chargebacks) are negative, like their ledger amounts."""

    month: str
    opening_balance_micros: int
    topups_micros: int
    usage_micros: int
    refunds_micros: int
    adjustments_micros: int
    closing_balance_micros: int
    entries: int
    first_seq: int
    last_seq: int

    @property
    def movements_micros(self) -> int:
        return (
            self.topups_micros + self.usage_micros + self.refunds_micros + (self.adjustments_micros)
        )


def check_statement(month: StatementMonth) -> None:
    """Raise :class:`~streambill.errors.InvariantViolation` unless the month adds up: its
    entries are one gap-free run of ``seq`` and opening + movements == closing.

    >>> ok = StatementMonth("2026-11", 0, 20_000_000, -225_000, 0, 0, 19_775_000, 2, 1, 2)
    >>> check_statement(ok)
    >>> check_statement(StatementMonth("2026-11", 0, 20_000_000, -225_000, 0, 0, 0, 2, 1, 2))
    Traceback (most recent call last):
    ...
    streambill.errors.InvariantViolation: 2026-11: opening 0 + movements 19775000 != closing 0
    """
    check(
        month.last_seq - month.first_seq + 1 == month.entries,
        f"{month.month}: {month.entries} entries at seq {month.first_seq}..{month.last_seq}",
    )
    check(
        month.opening_balance_micros + month.movements_micros == month.closing_balance_micros,
        f"{month.month}: opening {month.opening_balance_micros} + movements"
        f" {month.movements_micros} != closing {month.closing_balance_micros}",
    )


def check_statements(months: Sequence[StatementMonth]) -> None:
    """Every month adds up, and each opens where the one before it closed (newest first).

    >>> a = StatementMonth("2026-10", 0, 10, 0, 0, 0, 10, 1, 1, 1)
    >>> b = StatementMonth("2026-11", 10, 0, -3, 0, 0, 7, 1, 2, 2)
    >>> check_statements([b, a])
    >>> check_statements([b, StatementMonth("2026-10", 0, 9, 0, 0, 0, 9, 1, 1, 1)])
    Traceback (most recent call last):
    ...
    streambill.errors.InvariantViolation: 2026-11 opens at 10, 2026-10 closed at 9
    """
    for month in months:
        check_statement(month)
    for newer, older in itertools.pairwise(months):
        check(
            newer.opening_balance_micros == older.closing_balance_micros
            and newer.first_seq == older.last_seq + 1,
            f"{newer.month} opens at {newer.opening_balance_micros},"
            f" {older.month} closed at {older.closing_balance_micros}",
        )


def statement_months(client: Client, customer_id: str, timezone: str) -> list[StatementMonth]:
    """The customer's months with entries, newest first, each checked (see the module)."""
    rows = client.query(_MONTHS_SQL, parameters={"c": customer_id, "tz": timezone}).result_rows
    months = [_statement_month(r) for r in rows]
    check_statements(months)
    return months


def _statement_month(row: Sequence[Any]) -> StatementMonth:
    month, opening, closing, topups, usage, refunds, adjustments, entries, first, last = row
    return StatementMonth(
        month=month_text(int(month)),
        opening_balance_micros=int(opening),
        topups_micros=int(topups),
        usage_micros=int(usage),
        refunds_micros=int(refunds),
        adjustments_micros=int(adjustments),
        closing_balance_micros=int(closing),
        entries=int(entries),
        first_seq=int(first),
        last_seq=int(last),
    )


class StatementLine(NamedTuple):
    """Entries of one kind and meter in a month: quantity (usage only) and amount."""

    kind: str
    meter: str | None
    quantity: Decimal | None
    amount_micros: int
    entries: int


def statement_lines(
    client: Client, customer_id: str, timezone: str, month: str
) -> list[StatementLine]:
    """A month's entries grouped by kind and meter, ordered by kind, then meter."""
    rows = client.query(
        _LINES_SQL,
        parameters={"c": customer_id, "tz": timezone, "m": month_number(month)},
    ).result_rows
    return [
        StatementLine(
            str(kind),
            None if meter is None else str(meter),
            Decimal(quantity) if kind == "usage" else None,
            int(amount),
            int(entries),
        )
        for kind, meter, quantity, amount, entries in rows
    ]


# -- activity and revenue ----------------------------------------------------------------


class Activity(NamedTuple):
    """Customers with usage in the recent window, and in the one before it."""

    recent: frozenset[str]
    previous: frozenset[str]

    @property
    def churned(self) -> frozenset[str]:
        """Used in the previous window, not in the recent one."""
        return self.previous - self.recent


def activity(
    client: Client,
    reseller_id: str | None,
    previous_since: datetime,
    recent_since: datetime,
) -> Activity:
    """Who used anything per ``usage_per_day`` since ``recent_since``, and in
    [``previous_since``, ``recent_since``); a reseller's customers or (None) everyone's.
    Day buckets are UTC days: pass day starts."""
    scope = "" if reseller_id is None else " AND reseller_id = {r:String}"
    rows = client.query(
        "SELECT customer_id, sumIf(entries, bucket >= {recent:DateTime('UTC')}) AS recent,"
        " sumIf(entries, bucket < {recent:DateTime('UTC')}) AS previous"
        " FROM usage_per_day WHERE bucket >= {previous:DateTime('UTC')}"
        + scope
        + " GROUP BY customer_id",
        parameters={"r": reseller_id, "recent": utc(recent_since), "previous": utc(previous_since)},
    ).result_rows
    return Activity(
        frozenset(str(c) for c, recent, _ in rows if recent > 0),
        frozenset(str(c) for c, _, previous in rows if previous > 0),
    )


class Spend(NamedTuple):
    """One customer's usage spend in one currency: this month so far and the month before."""

    customer_id: str
    currency: str
    month_to_date_micros: int
    previous_month_micros: int


def reseller_spend(
    client: Client,
    reseller_id: str,
    previous_start: datetime,
    month_start: datetime,
    until: datetime,
) -> list[Spend]:
    """Per customer and currency, from ``usage_per_hour`` (hour buckets, so month bounds are
    exact in every zone with a whole-hour offset; pass them floored to the hour)."""
    rows = client.query(
        "SELECT customer_id, currency,"
        " sumIf(spend_micros, bucket >= {month:DateTime('UTC')}),"
        " sumIf(spend_micros, bucket < {month:DateTime('UTC')})"
        " FROM usage_per_hour WHERE reseller_id = {r:String}"
        " AND bucket >= {previous:DateTime('UTC')} AND bucket < {until:DateTime('UTC')}"
        " GROUP BY customer_id, currency ORDER BY customer_id, currency",
        parameters={
            "r": reseller_id,
            "previous": utc(previous_start),
            "month": utc(month_start),
            "until": utc(until),
        },
    ).result_rows
    return [Spend(str(c), str(cur), int(mtd), int(prev)) for c, cur, mtd, prev in rows]


@dataclass(frozen=True)
class PlatformFigures:
    """The platform's figures that ClickHouse holds."""

    usage_events_today: int
    revenue_month_to_date: dict[str, int]
    fraud_alerts_24h: int
    ledger_entries: int


def platform_figures(
    client: Client, today: datetime, month_start: datetime, alerts_since: datetime
) -> PlatformFigures:
    """Usage events applied since ``today`` (a UTC day start), usage spend per currency
    since ``month_start`` (a UTC day start), fraud alerts since ``alerts_since``, and how
    many ledger entries there are (each entry_id is inserted once by the sink, so ``count()``
    is exact but for a race the rollups' rebuild also repairs; it reads no data)."""
    day = client.query(
        "SELECT currency, sumIf(entries, bucket >= {today:DateTime('UTC')}), sum(spend_micros)"
        " FROM usage_per_day WHERE bucket >= {month:DateTime('UTC')} GROUP BY currency"
        " ORDER BY currency",
        parameters={"today": utc(today), "month": utc(month_start)},
    ).result_rows
    alerts = _scalar(
        client,
        "SELECT uniqExact(alert_id) FROM alerts"
        " WHERE kind = 'fraud_suspected' AND created_at >= {since:DateTime64(6, 'UTC')}",
        {"since": utc(alerts_since)},
    )
    return PlatformFigures(
        usage_events_today=sum(int(r[1]) for r in day),
        revenue_month_to_date={str(r[0]): int(r[2]) for r in day},
        fraud_alerts_24h=alerts,
        ledger_entries=_scalar(client, "SELECT count() FROM ledger", {}),
    )


def _scalar(client: Client, sql: str, parameters: dict[str, Any]) -> int:
    rows = client.query(sql, parameters=parameters).result_rows
    return int(rows[0][0]) if rows else 0

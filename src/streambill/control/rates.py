"""Reference exchange rates in the control plane (``exchange_rates``): set by the admin, read
by the commissions agent (which converts a customer's charges into its reseller's currency)
and by anyone who needs a :class:`~streambill.domain.fx.RateTable`.

Rates are units per euro, as the ECB publishes them. Only the currencies streambill bills in
are kept (USD, GBP; EUR is the base, always 1): other rows of an ECB file are skipped and
counted. A write changes ``updated_at`` only where the rate changed, which is how the agent
notices what to read again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Final

from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.control.models import ExchangeRate
from streambill.control.plane import ControlPlane, audit
from streambill.control.principal import Principal
from streambill.domain.fx import BASE, RateTable
from streambill.domain.money import CURRENCIES
from streambill.errors import Forbidden, InvalidEvent

QUOTED: Final = frozenset(CURRENCIES - {BASE})
ROWS_MAX: Final = 100_000
FIRST_DAY: Final = date(1999, 1, 4)  # the ECB's first reference rates
RATE_MAX: Final = Decimal(1_000_000)
RATE_DECIMALS_MAX: Final = 10
SOURCES: Final = frozenset({"api", "ecb", "csv"})
WRITE_CHUNK: Final = 500


@dataclass(frozen=True)
class ImportResult:
    received: int
    stored: int  # inserted or changed
    unchanged: int
    skipped: int  # rows for currencies streambill does not bill in (and EUR, the base)
    skipped_currencies: list[str] = field(default_factory=list)


_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CURRENCY: Final = re.compile(r"^[A-Z]{3}$")
_RATE: Final = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,12})?$")


def invalid(message: str) -> InvalidEvent:
    return InvalidEvent(message, code="invalid_rates")


def parse_rows(items: Sequence[tuple[str, str, str]]) -> list[tuple[date, str, Decimal]]:
    """``(day, currency, rate)`` as people write them -> typed rows; ``invalid_rates`` else.

    >>> parse_rows([("2026-11-20", "USD", "1.0512")])
    [(datetime.date(2026, 11, 20), 'USD', Decimal('1.0512'))]
    >>> parse_rows([("2026-11-31", "USD", "1.05")])
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: rates[0]: not a day: '2026-11-31'
    """
    out = []
    for n, (day, currency, rate) in enumerate(items):
        try:
            if not _DAY.match(day):
                raise ValueError
            parsed_day = date.fromisoformat(day)
        except ValueError:
            raise invalid(f"rates[{n}]: not a day: {day!r}") from None
        if not _CURRENCY.match(currency):
            raise invalid(f"rates[{n}]: not a currency code: {currency!r}")
        if not _RATE.match(rate):
            raise invalid(f"rates[{n}]: not a decimal rate: {rate!r}")
        out.append((parsed_day, currency, Decimal(rate)))
    return out


def check_rows(
    rows: Sequence[tuple[date, str, Decimal]], today: date
) -> tuple[list[tuple[date, str, Decimal]], list[str]]:
    """The rows to keep (last one wins per day and currency) and the skipped currencies;
    ``invalid_rates`` for a day outside the ECB's range, a rate that is not a sane positive
    decimal, or too many rows.

    >>> keep, skipped = check_rows([(date(2026, 11, 20), "USD", Decimal("1.05")),
    ...                             (date(2026, 11, 20), "JPY", Decimal("160.1"))],
    ...                            date(2026, 11, 27))
    >>> keep, skipped
    ([(datetime.date(2026, 11, 20), 'USD', Decimal('1.05'))], ['JPY'])
    """
    if not rows:
        raise invalid("no rates given")
    if len(rows) > ROWS_MAX:
        raise invalid(f"at most {ROWS_MAX} rates at once")
    keep: dict[tuple[date, str], Decimal] = {}
    skipped: set[str] = set()
    for day, currency, rate in rows:
        if not FIRST_DAY <= day <= today + timedelta(days=1):
            raise invalid(f"{currency} on {day}: the day must be from {FIRST_DAY} to tomorrow")
        if not rate.is_finite() or not Decimal(0) < rate < RATE_MAX:
            raise invalid(f"{currency} on {day}: the rate must be positive, got {rate}")
        if -rate.as_tuple().exponent > RATE_DECIMALS_MAX:  # type: ignore[operator]
            raise invalid(f"{currency} on {day}: at most {RATE_DECIMALS_MAX} decimals")
        if currency not in QUOTED:
            skipped.add(currency)
            continue
        keep[(day, currency)] = rate
    return [(d, c, r) for (d, c), r in sorted(keep.items())], sorted(skipped)


async def upsert_rates(
    cp: ControlPlane,
    p: Principal,
    rows: Sequence[tuple[date, str, Decimal]],
    source: str,
) -> ImportResult:
    """Insert or update rates (the admin only), one transaction, audited."""
    if not p.is_admin:
        raise Forbidden("only the platform admin sets exchange rates")
    if source not in SOURCES:
        raise ValueError(f"unknown rate source {source!r}")
    now = cp.clock()
    keep, skipped_currencies = check_rows(rows, now.date())
    skipped = sum(1 for _, currency, _ in rows if currency not in QUOTED)
    stored = 0
    async with cp.sessions.begin() as session:
        for start in range(0, len(keep), WRITE_CHUNK):
            chunk = keep[start : start + WRITE_CHUNK]
            values = [
                {
                    "day": d.isoformat(),
                    "currency": c,
                    "rate": str(r),
                    "source": source,
                    "updated_at": now,
                }
                for d, c, r in chunk
            ]
            stored += await _upsert(session, values)
        details: dict[str, object] = {"source": source, "stored": stored, "skipped": skipped}
        if keep:
            details["days"] = f"{keep[0][0]}..{keep[-1][0]}"
        audit(session, now, p, "exchange_rates.set", "exchange_rates", details)
    return ImportResult(
        received=len(rows),
        stored=stored,
        unchanged=len(keep) - stored,
        skipped=skipped,
        skipped_currencies=skipped_currencies,
    )


async def _upsert(session: SqlSession, values: list[dict[str, object]]) -> int:
    """Insert new rows, update those whose rate differs; the number inserted or changed."""
    dialect = (await session.connection()).dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ExchangeRate).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[ExchangeRate.day, ExchangeRate.currency],
        set_={
            "rate": statement.excluded.rate,
            "source": statement.excluded.source,
            "updated_at": statement.excluded.updated_at,
        },
        where=ExchangeRate.rate != statement.excluded.rate,
    )
    # RETURNING names the rows inserted or updated (rowcount is -1 on some drivers).
    result = await session.execute(statement.returning(ExchangeRate.day))
    return len(result.all())


async def list_rates(
    cp: ControlPlane,
    p: Principal,
    day_from: date | None,
    day_to: date | None,
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[ExchangeRate]:
    """Rates by day and currency (the admin only), ``limit`` of them after ``after``."""
    if not p.is_admin:
        raise Forbidden("only the platform admin reads exchange rates")
    query = select(ExchangeRate)
    if day_from is not None:
        query = query.where(ExchangeRate.day >= day_from.isoformat())
    if day_to is not None:
        query = query.where(ExchangeRate.day <= day_to.isoformat())
    if after is not None:
        day, currency = after
        query = query.where(
            or_(
                ExchangeRate.day > day,
                and_(ExchangeRate.day == day, ExchangeRate.currency > currency),
            )
        )
    query = query.order_by(ExchangeRate.day, ExchangeRate.currency).limit(limit)
    async with cp.sessions() as session:
        return list((await session.scalars(query)).all())


async def load_rate_table(session: SqlSession) -> RateTable:
    """Every stored rate as a :class:`RateTable` (a few thousand rows per year of history)."""
    table = RateTable()
    rows = await session.execute(select(ExchangeRate.day, ExchangeRate.currency, ExchangeRate.rate))
    for day, currency, rate in rows:
        table.add(date.fromisoformat(day), currency, Decimal(rate))
    return table

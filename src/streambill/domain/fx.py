"""Reference exchange rates and exact conversion between EUR, USD and GBP.

Rates are quoted the way the ECB publishes its daily reference rates: units of a currency per
one euro (``USD 1.0812`` means 1 EUR = 1.0812 USD). A conversion on a day uses that day's
rates, or the latest earlier day's (the ECB publishes nothing on weekends and TARGET
holidays), never a later one; every conversion returns the rate it used, so each commission
entry can say which rate produced it.

>>> table = RateTable()
>>> table.add(date(2026, 11, 20), "USD", Decimal("1.0500"))
>>> table.add(date(2026, 11, 20), "GBP", Decimal("0.8400"))
>>> c = table.convert(10_000_000, "USD", "EUR", date(2026, 11, 22))  # a Sunday
>>> c.micros, c.rate, c.rate_date
(9523810, Decimal('0.9523809524'), datetime.date(2026, 11, 20))
>>> table.convert(10_000_000, "USD", "GBP", date(2026, 11, 20)).micros
8000000
>>> table.convert(10_000_000, "EUR", "EUR", date(2026, 1, 1)).rate
Decimal('1')
"""

from __future__ import annotations

import bisect
import csv
import io
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final
from xml.etree import ElementTree

from streambill.domain.money import CURRENCIES, DECIMAL_CONTEXT, round_micros
from streambill.errors import InvalidEvent

BASE: Final = "EUR"
CROSS_RATE_QUANTUM: Final = Decimal("1e-10")
MAX_STALE_DAYS: Final = 10  # a rate older than this is no rate (a gap in the table, not a holiday)


class NoRate(InvalidEvent):
    """No reference rate on or shortly before the day asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="no_exchange_rate")


@dataclass(frozen=True)
class Conversion:
    micros: int
    rate: Decimal  # units of the target currency per unit of the source currency
    rate_date: date


@dataclass
class RateTable:
    """Per quoted currency, the days it has a rate for (sorted) and the rates."""

    _days: dict[str, list[date]] = field(default_factory=dict)
    _rates: dict[tuple[str, date], Decimal] = field(default_factory=dict)

    def add(self, day: date, currency: str, per_euro: Decimal) -> None:
        if currency == BASE:
            return
        if currency not in CURRENCIES:
            return  # the ECB quotes ~30 currencies; streambill bills in three
        if not per_euro.is_finite() or per_euro <= 0:
            raise InvalidEvent(f"rate for {currency} on {day}: must be positive, got {per_euro}")
        days = self._days.setdefault(currency, [])
        if (currency, day) not in self._rates:
            bisect.insort(days, day)
        self._rates[(currency, day)] = per_euro

    def per_euro(self, currency: str, day: date) -> tuple[Decimal, date]:
        """Units of ``currency`` per euro on ``day`` (or the latest day before it)."""
        if currency == BASE:
            return Decimal(1), day
        days = self._days.get(currency, [])
        at = bisect.bisect_right(days, day)
        if at == 0 or (day - days[at - 1]).days > MAX_STALE_DAYS:
            raise NoRate(f"no {currency} reference rate on or before {day}")
        found = days[at - 1]
        return self._rates[(currency, found)], found

    def convert(self, micros: int, source: str, target: str, day: date) -> Conversion:
        """``micros`` of ``source`` in ``target`` at the reference rate of ``day``,
        rounded half-even to the micro (the one rounding function)."""
        if source == target:
            return Conversion(micros, Decimal(1), day)
        source_rate, source_day = self.per_euro(source, day)
        target_rate, target_day = self.per_euro(target, day)
        # The cross rate is kept to 10 decimals and that is the rate used (and recorded).
        rate = DECIMAL_CONTEXT.divide(target_rate, source_rate).quantize(
            CROSS_RATE_QUANTUM, rounding=ROUND_HALF_EVEN
        )
        units = DECIMAL_CONTEXT.multiply(DECIMAL_CONTEXT.divide(Decimal(micros), 1_000_000), rate)
        return Conversion(round_micros(units), rate, min(source_day, target_day))

    def exact(self, currency: str, day: date) -> Decimal | None:
        """The rate stored for exactly that day (no earlier day), or None."""
        if currency == BASE:
            return Decimal(1)
        return self._rates.get((currency, day))

    def rows(self) -> list[tuple[date, str, Decimal]]:
        """Every stored rate as (day, currency, units per euro), in a stable order."""
        return sorted((day, currency, rate) for (currency, day), rate in self._rates.items())

    def __len__(self) -> int:
        return len(self._rates)


def parse_ecb_xml(text: str | bytes) -> list[tuple[date, str, Decimal]]:
    """The ECB's ``eurofxref-daily.xml`` / ``eurofxref-hist.xml``: (day, currency, per euro).

    >>> rows = parse_ecb_xml('''<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01"
    ...   xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref"><Cube>
    ...   <Cube time="2026-11-20"><Cube currency="USD" rate="1.0500"/>
    ...   <Cube currency="GBP" rate="0.84"/></Cube></Cube></gesmes:Envelope>''')
    >>> [(str(day), currency, str(rate)) for day, currency, rate in rows]
    [('2026-11-20', 'USD', '1.0500'), ('2026-11-20', 'GBP', '0.84')]
    """
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise InvalidEvent(f"not the ECB's XML: {exc}", code="invalid_rates") from None
    out = []
    for day_cube in root.iter():
        when = day_cube.attrib.get("time")
        if when is None:
            continue
        day = _day(when)
        for cube in day_cube:
            currency, rate = cube.attrib.get("currency"), cube.attrib.get("rate")
            if currency and rate:
                out.append((day, currency, _rate(rate, currency, day)))
    if not out:
        raise InvalidEvent("no rates in the file", code="invalid_rates")
    return out


def parse_csv(text: str) -> list[tuple[date, str, Decimal]]:
    """``date,currency,rate`` rows (a header line allowed): units of currency per euro.

    >>> parse_csv("date,currency,rate\\n2026-11-20,USD,1.05\\n")
    [(datetime.date(2026, 11, 20), 'USD', Decimal('1.05'))]
    """
    out = []
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (n == 1 and row[0].strip().lower() == "date"):
            continue
        if len(row) != 3:
            raise InvalidEvent(f"line {n}: want date,currency,rate", code="invalid_rates")
        day = _day(row[0].strip())
        currency = row[1].strip().upper()
        out.append((day, currency, _rate(row[2].strip(), currency, day)))
    return out


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"not a date: {text!r}", code="invalid_rates") from None


def _rate(text: str, currency: str, day: date) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise InvalidEvent(
            f"{currency} on {day}: not a rate: {text!r}", code="invalid_rates"
        ) from None
    if not value.is_finite() or value <= 0:
        raise InvalidEvent(f"{currency} on {day}: rate must be positive", code="invalid_rates")
    return value

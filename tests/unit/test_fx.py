"""Reference rates: the day's rate or the latest before it, never a later one; exact rounding."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streambill.domain.fx import NoRate, RateTable, parse_csv, parse_ecb_xml
from streambill.errors import InvalidEvent


def table() -> RateTable:
    t = RateTable()
    for day, usd, gbp in [
        (date(2026, 11, 19), "1.0400", "0.8300"),
        (date(2026, 11, 20), "1.0500", "0.8400"),
        (date(2026, 11, 23), "1.0600", "0.8500"),
    ]:
        t.add(day, "USD", Decimal(usd))
        t.add(day, "GBP", Decimal(gbp))
    return t


def test_weekends_use_friday_and_never_monday() -> None:
    t = table()
    saturday = t.convert(100_000_000, "EUR", "USD", date(2026, 11, 21))
    assert (saturday.micros, saturday.rate, saturday.rate_date) == (
        105_000_000,
        Decimal("1.0500000000"),
        date(2026, 11, 20),
    )
    assert t.convert(100_000_000, "EUR", "USD", date(2026, 11, 23)).micros == 106_000_000
    with pytest.raises(NoRate):
        t.convert(1, "EUR", "USD", date(2026, 11, 18))  # before the first rate
    with pytest.raises(NoRate):
        t.convert(1, "EUR", "USD", date(2026, 12, 10))  # a gap, not a holiday


def test_cross_rates_go_through_the_euro() -> None:
    c = table().convert(10_000_000, "USD", "GBP", date(2026, 11, 20))
    assert c.rate == Decimal("0.8000000000") and c.micros == 8_000_000


@given(st.integers(-(10**15), 10**15))
def test_conversion_is_half_even_at_the_recorded_rate(micros: int) -> None:
    c = table().convert(micros, "GBP", "USD", date(2026, 11, 20))
    exact = Decimal(micros) * c.rate
    assert abs(Decimal(c.micros) - exact) <= Decimal("0.5")


def test_imports() -> None:
    xml = (
        '<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" '
        'xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref"><Cube>'
        '<Cube time="2026-11-20"><Cube currency="USD" rate="1.0500"/>'
        '<Cube currency="JPY" rate="161.2"/></Cube></Cube></gesmes:Envelope>'
    )
    t = RateTable()
    for row in parse_ecb_xml(xml) + parse_csv("date,currency,rate\n2026-11-20,GBP,0.84\n"):
        t.add(*row)
    assert len(t) == 2  # JPY is not a currency streambill bills in
    with pytest.raises(InvalidEvent, match="rate must be positive"):
        parse_csv("2026-11-20,USD,-1\n")
    with pytest.raises(InvalidEvent, match="not the ECB"):
        parse_ecb_xml("<nope")

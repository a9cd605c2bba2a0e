"""Money is integer micros plus an ISO currency code. Never a float.

1 unit of currency = 1,000,000 micros. Decimal is used only to parse what people type and to
format what people read; :func:`round_micros` is the one rounding function (half-even).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Final

from streambill.errors import InvalidEvent

MICROS_PER_UNIT: Final = 1_000_000
CURRENCIES: Final = frozenset({"EUR", "USD", "GBP"})
# Bounds keep every amount well inside Int64 (ClickHouse) and guard against typos.
MAX_AMOUNT_MICROS: Final = 10**15  # one billion units
MAX_QUANTITY: Final = Decimal(10**9)
_MAX_DECIMAL_CHARS: Final = 40
# The one arithmetic context for money: 60 digits, so products of bounded quantities and
# prices are exact before the one rounding step. Passed explicitly (a ``localcontext()`` per
# call cost more than the arithmetic).
DECIMAL_CONTEXT: Final = Context(prec=60)
_ONE: Final = Decimal(1)


def parse_decimal(value: object, *, field: str) -> Decimal:
    """Parse a decimal string or number given by a person or a service.

    Floats are accepted only through their shortest repr (JSON numbers arrive as floats),
    so ``1.1`` is exactly ``Decimal("1.1")``.

    >>> parse_decimal("12.50", field="amount")
    Decimal('12.50')
    >>> parse_decimal(1.1, field="quantity")
    Decimal('1.1')
    >>> parse_decimal("abc", field="amount")
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: amount: not a decimal number: 'abc'
    """
    if isinstance(value, bool):
        raise InvalidEvent(f"{field}: not a decimal number: {value!r}")
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_DECIMAL_CHARS:
            raise InvalidEvent(f"{field}: not a decimal number: {value[:50]!r}")
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise InvalidEvent(f"{field}: not a decimal number: {value!r}") from None
    elif isinstance(value, Decimal):
        result = value
    else:
        raise InvalidEvent(f"{field}: not a decimal number: {type(value).__name__}")
    if not result.is_finite():
        raise InvalidEvent(f"{field}: not a finite number: {value!r}")
    return result


def scale_micros(micros: int, numerator: int, denominator: int) -> int:
    """``micros x numerator / denominator`` rounded half-even to the micro: the rounding of
    :func:`round_micros`, on integers (a rate as an exact fraction, see
    ``Decimal.as_integer_ratio``), for hot paths.

    >>> scale_micros(3, 1, 2), scale_micros(5, 1, 2), scale_micros(-3, 1, 2), scale_micros(7, 1, 3)
    (2, 2, -2, 2)
    >>> scale_micros(1_100_000_000, *Decimal("0.275").as_integer_ratio())
    302500000
    """
    quotient, remainder = divmod(micros * numerator, denominator)  # floor: 0 <= remainder
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def round_micros(amount_units: Decimal) -> int:
    """The one rounding function: major units -> integer micros, half-even.

    >>> round_micros(Decimal("0.0000005"))
    0
    >>> round_micros(Decimal("0.0000015"))
    2
    >>> round_micros(Decimal("-1.2345675"))
    -1234568
    >>> round_micros(Decimal("1e400"))
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: amount out of range: 1E+400
    """
    if amount_units.is_finite() and amount_units.adjusted() > 40:
        # Would not fit the 60-digit context (quantize raises InvalidOperation, which would
        # crash the agent on one bad event instead of dead-lettering it).
        raise InvalidEvent(f"amount out of range: {amount_units}")
    scaled = DECIMAL_CONTEXT.multiply(amount_units, MICROS_PER_UNIT)
    return int(scaled.quantize(_ONE, rounding=ROUND_HALF_EVEN, context=DECIMAL_CONTEXT))


def to_micros(value: object, *, field: str = "amount") -> int:
    """Parse an amount in major units (``"12.50"``) into micros, bounded.

    >>> to_micros("12.50")
    12500000
    >>> to_micros("-0.15")
    -150000
    """
    micros = round_micros(parse_decimal(value, field=field))
    if abs(micros) > MAX_AMOUNT_MICROS:
        raise InvalidEvent(f"{field}: out of range: {value!r}")
    return micros


def format_micros(micros: int) -> str:
    """Format micros as a decimal string in major units with at least two decimals.

    >>> format_micros(19775000)
    '19.775'
    >>> format_micros(-150000)
    '-0.15'
    >>> format_micros(5)
    '0.000005'
    >>> format_micros(20000000)
    '20.00'
    """
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    frac_text = f"{frac:06d}".rstrip("0")
    if len(frac_text) < 2:
        frac_text = frac_text.ljust(2, "0")
    return f"{sign}{whole}.{frac_text}"


def check_currency(code: object) -> str:
    """Validate an ISO currency code we bill in.

    >>> check_currency("EUR")
    'EUR'
    >>> check_currency("JPY")
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: currency: unsupported currency 'JPY' (EUR, GBP, USD)
    """
    if not isinstance(code, str) or code not in CURRENCIES:
        raise InvalidEvent(
            f"currency: unsupported currency {code!r} ({', '.join(sorted(CURRENCIES))})"
        )
    return code

"""Rating: what one usage event costs under a customer's price list.

``charge = quantity * unit_price``, rounded half-even to the micro, computed in Decimal so the
result is exact before the one rounding step.
"""

from __future__ import annotations

from decimal import Decimal

from streambill.domain.money import DECIMAL_CONTEXT, MAX_AMOUNT_MICROS, round_micros
from streambill.errors import InvalidEvent, UnknownMeter


def rate_usage(quantity: Decimal, unit_price: Decimal) -> int:
    """Micros charged for ``quantity`` at ``unit_price`` (major units), a non-negative int.

    >>> rate_usage(Decimal("1.5"), Decimal("0.15"))
    225000
    >>> rate_usage(Decimal("0.0000025"), Decimal("1"))
    2
    >>> rate_usage(Decimal("0.0000035"), Decimal("1"))
    4
    """
    key = (quantity, unit_price)
    micros = _RATED.get(key)
    if micros is not None:
        return micros
    micros = round_micros(DECIMAL_CONTEXT.multiply(quantity, unit_price))
    if micros > MAX_AMOUNT_MICROS:
        raise InvalidEvent(f"charge out of range: {quantity} * {unit_price}")
    if len(_RATED) >= _RATED_MAX:
        _RATED.clear()
    _RATED[key] = micros
    return micros


# Charges of recent (quantity, unit price) pairs. Usage repeats its quantities (whole
# minutes, token blocks, the same call lengths), and a hit costs a dict lookup instead of two
# 60-digit Decimal operations. Equal Decimals hash alike ("1.50" and "1.5"), and equal values
# have equal charges, so a hit is exact.
_RATED_MAX = 65_536
_RATED: dict[tuple[Decimal, Decimal], int] = {}


def price_for(prices: dict[str, Decimal], meter: str) -> Decimal:
    """The unit price of ``meter``, or :class:`UnknownMeter`.

    >>> price_for({"call_minutes": Decimal("0.15")}, "call_minutes")
    Decimal('0.15')
    >>> price_for({}, "sms")
    Traceback (most recent call last):
    ...
    streambill.errors.UnknownMeter: meter 'sms' has no price for this customer
    """
    try:
        return prices[meter]
    except KeyError:
        raise UnknownMeter(f"meter {meter!r} has no price for this customer") from None

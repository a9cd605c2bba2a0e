"""Rating: what one usage event costs under a customer's price list.

``charge = quantity * unit_price``, rounded half-even to the micro, computed in Decimal so the
result is exact before the one rounding step.
"""

from __future__ import annotations

from decimal import Decimal, localcontext

from streambill.domain.money import MAX_AMOUNT_MICROS, round_micros
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
    with localcontext() as ctx:
        ctx.prec = 60
        micros = round_micros(quantity * unit_price)
    if micros > MAX_AMOUNT_MICROS:
        raise InvalidEvent(f"charge out of range: {quantity} * {unit_price}")
    return micros


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

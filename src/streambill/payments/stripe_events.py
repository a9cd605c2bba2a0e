"""Stripe webhook events -> ``billing.payments.v1`` events, as pure functions.

Exactly once, whatever the order and however often Stripe sends an event, rests on ids:

- a top-up's ``event_id`` is its PaymentIntent id. A Checkout payment announces itself twice
  (``checkout.session.completed`` with ``payment_status: paid``, then
  ``payment_intent.succeeded``), a SEPA Checkout as ``checkout.session.async_payment_succeeded``;
  all of them name the same PaymentIntent, so the balances agent applies the credit once.
- a refund's ``event_id`` is the Refund id (``re_…``): ``charge.refunded`` lists every refund of
  the charge so far, and each becomes one event, repeated harmlessly in later deliveries.
- a chargeback's ``event_id`` is the Dispute id; a dispute closed as ``won`` gives the money
  back as an ``adjustment`` with ``<dispute id>:won``.

Stripe amounts are integers in the currency's minor unit; EUR, USD and GBP have two decimals.
An event that is not about a streambill customer (no ``customer_id`` in the metadata) maps to
nothing, and so does a payment that did not succeed (the auto top-up agent handles failures).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from streambill.errors import InvalidEvent

MINOR_UNITS: Final = {"EUR": 2, "USD": 2, "GBP": 2}
PROVIDER: Final = "stripe"


def major_units(amount_minor: object, currency: str) -> str:
    """Stripe's minor units as our decimal string.

    >>> major_units(2000, "EUR"), major_units(5, "usd")
    ('20.00', '0.05')
    """
    code = currency.upper()
    if code not in MINOR_UNITS:
        raise InvalidEvent(f"currency {currency!r} is not one streambill bills in")
    if type(amount_minor) is not int or amount_minor <= 0:
        raise InvalidEvent(f"amount must be a positive integer, got {amount_minor!r}")
    return str(Decimal(amount_minor).scaleb(-MINOR_UNITS[code]))


def _at(seconds: object) -> str:
    if type(seconds) is not int:
        raise InvalidEvent("event.created is not a unix time")
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _payment(
    event_id: str,
    customer_id: str,
    kind: str,
    amount: str,
    currency: str,
    occurred_at: str,
    ref: str,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "kind": kind,
        "amount": amount,
        "currency": currency.upper(),
        "occurred_at": occurred_at,
        "provider": PROVIDER,
        "provider_ref": ref,
    }


def _customer(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata") or {}
    value = metadata.get("customer_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def _id(value: object) -> str | None:
    """An id field that Stripe sends either as a string or as an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def payment_events(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The payment events a Stripe event stands for (often none). Raises
    :class:`InvalidEvent` when an event of a handled type lacks what it must carry."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise InvalidEvent("not a Stripe event (type and data.object)")
    created = _at(event.get("created"))
    handler = _HANDLERS.get(kind)
    return handler(obj, created) if handler is not None else []


def _checkout(session: dict[str, Any], created: str) -> list[dict[str, Any]]:
    customer = _customer(session)
    if customer is None or session.get("mode") != "payment":
        return []
    if session.get("payment_status") != "paid":
        return []  # SEPA and other delayed methods: async_payment_succeeded follows
    intent = _id(session.get("payment_intent"))
    if intent is None:
        raise InvalidEvent("a paid checkout session without a payment_intent")
    currency = str(session.get("currency", ""))
    amount = major_units(session.get("amount_total"), currency)
    return [_payment(intent, customer, "topup", amount, currency, created, intent)]


def _intent_succeeded(intent: dict[str, Any], created: str) -> list[dict[str, Any]]:
    customer = _customer(intent)
    if customer is None:
        return []
    intent_id = _id(intent)
    if intent_id is None:
        raise InvalidEvent("a payment_intent without an id")
    currency = str(intent.get("currency", ""))
    received = intent.get("amount_received") or intent.get("amount")
    amount = major_units(received, currency)
    return [_payment(intent_id, customer, "topup", amount, currency, created, intent_id)]


def _refunded(charge: dict[str, Any], created: str) -> list[dict[str, Any]]:
    customer = _customer(charge)
    if customer is None:
        return []
    refunds = (charge.get("refunds") or {}).get("data")
    if not isinstance(refunds, list) or not refunds:
        raise InvalidEvent("charge.refunded without its refunds")
    out = []
    for refund in refunds:
        if not isinstance(refund, dict) or refund.get("status") not in ("succeeded", "pending"):
            continue  # failed or canceled refunds took no money
        refund_id = _id(refund)
        if refund_id is None:
            raise InvalidEvent("a refund without an id")
        currency = str(refund.get("currency") or charge.get("currency", ""))
        amount = major_units(refund.get("amount"), currency)
        out.append(_payment(refund_id, customer, "refund", amount, currency, created, refund_id))
    return out


def _dispute_created(dispute: dict[str, Any], created: str) -> list[dict[str, Any]]:
    customer = _customer(dispute)
    dispute_id = _id(dispute)
    if customer is None or dispute_id is None:
        return []
    currency = str(dispute.get("currency", ""))
    amount = major_units(dispute.get("amount"), currency)
    return [_payment(dispute_id, customer, "chargeback", amount, currency, created, dispute_id)]


def _dispute_closed(dispute: dict[str, Any], created: str) -> list[dict[str, Any]]:
    customer = _customer(dispute)
    dispute_id = _id(dispute)
    if customer is None or dispute_id is None or dispute.get("status") != "won":
        return []  # lost: the chargeback stands
    currency = str(dispute.get("currency", ""))
    amount = major_units(dispute.get("amount"), currency)
    return [
        _payment(f"{dispute_id}:won", customer, "adjustment", amount, currency, created, dispute_id)
    ]


_HANDLERS = {
    "checkout.session.completed": _checkout,
    "checkout.session.async_payment_succeeded": _checkout,
    "payment_intent.succeeded": _intent_succeeded,
    "charge.refunded": _refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.closed": _dispute_closed,
}
# Every type the webhook acts on (money, attempts, saved payment methods): what the
# reconciler takes in when its webhook never arrived.
HANDLED_TYPES: Final = frozenset(_HANDLERS) | {
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.payment_failed",
    "setup_intent.succeeded",
}

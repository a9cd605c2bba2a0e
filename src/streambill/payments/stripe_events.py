"""Stripe webhook events -> what they say about money, as pure functions.

Exactly once, whatever the order and however often Stripe sends an event, rests on ids:

- a top-up's ``event_id`` is its PaymentIntent id. A Checkout payment announces itself twice
  (``checkout.session.completed`` with ``payment_status: paid``, then
  ``payment_intent.succeeded``), a SEPA Checkout as ``checkout.session.async_payment_succeeded``;
  all of them name the same PaymentIntent, so it is credited once
  (:func:`payment_events`; the customer is ``metadata.customer_id``, which streambill sets
  on every PaymentIntent and Checkout Session it makes).
- refunds and disputes are read as facts (:func:`money_facts`): Stripe announces a refund
  with ``refund.created`` / ``refund.updated`` / ``refund.failed`` /
  ``charge.refund.updated`` (a ``charge.refunded`` no longer lists the refunds since API
  version 2022-11-15), a dispute's money with ``charge.dispute.funds_withdrawn`` and
  ``charge.dispute.funds_reinstated``. Neither object carries our customer; which customer,
  and whether money moves now, is decided against what was recorded before
  (:mod:`streambill.payments.money`).

Stripe amounts are integers in the currency's minor unit; EUR, USD and GBP have two decimals.
A top-up that is not a streambill customer's (no ``customer_id`` in the metadata) maps to
nothing, and so does a payment that did not succeed (the auto top-up agent handles failures).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class RefundFact:
    """What a Stripe event says about one refund. Its customer is not on it (a refund's
    metadata is its own, empty unless someone set it): it is found through the payment
    intent or charge that was credited (:mod:`.money`)."""

    refund_id: str
    status: str  # pending | requires_action | succeeded | failed | canceled
    amount_minor: int
    currency: str
    payment_intent: str | None
    charge: str | None
    occurred_at: str


@dataclass(frozen=True, slots=True)
class DisputeFact:
    """What a Stripe event says about one dispute: ``movement`` is ``withdrawn`` (the funds
    left: a chargeback), ``reinstated`` (they came back) or None (a status change only)."""

    dispute_id: str
    movement: str | None
    status: str
    amount_minor: int
    currency: str
    payment_intent: str | None
    charge: str | None
    occurred_at: str


REFUND_STATUSES: Final = frozenset(
    {"pending", "requires_action", "succeeded", "failed", "canceled"}
)


def refund_fact(refund: dict[str, Any], created: str) -> RefundFact:
    """A Refund object as a fact; raises :class:`InvalidEvent` when it is not one."""
    refund_id = _id(refund)
    status = refund.get("status")
    if refund_id is None or not isinstance(status, str) or status not in REFUND_STATUSES:
        raise InvalidEvent("a refund without an id or with an unknown status")
    currency = str(refund.get("currency", ""))
    amount = refund.get("amount")
    major_units(amount, currency)  # validates amount and currency
    assert isinstance(amount, int)
    return RefundFact(
        refund_id,
        status,
        amount,
        currency.upper(),
        _id(refund.get("payment_intent")),
        _id(refund.get("charge")),
        created,
    )


def refunds_listed(charge: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The refunds a Charge object carries (API versions before 2022-11-15, or ``refunds``
    expanded), None when it carries none (the current shape of ``charge.refunded``)."""
    refunds = (charge.get("refunds") or {}).get("data")
    if not isinstance(refunds, list) or not refunds:
        return None
    return [r for r in refunds if isinstance(r, dict)]


_DISPUTE_MOVES: Final = {
    "charge.dispute.funds_withdrawn": "withdrawn",
    "charge.dispute.funds_reinstated": "reinstated",
}
DISPUTE_TYPES: Final = frozenset(
    {*_DISPUTE_MOVES, "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed"}
)
REFUND_TYPES: Final = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)


def dispute_fact(kind: str, dispute: dict[str, Any], created: str) -> DisputeFact:
    dispute_id = _id(dispute)
    if dispute_id is None:
        raise InvalidEvent("a dispute without an id")
    currency = str(dispute.get("currency", ""))
    amount = dispute.get("amount")
    major_units(amount, currency)
    assert isinstance(amount, int)
    return DisputeFact(
        dispute_id,
        _DISPUTE_MOVES.get(kind),
        str(dispute.get("status") or ""),
        amount,
        currency.upper(),
        _id(dispute.get("payment_intent")),
        _id(dispute.get("charge")),
        created,
    )


def money_facts(event: dict[str, Any]) -> list[RefundFact | DisputeFact] | None:
    """The refunds and disputes a Stripe event is about: a list (perhaps empty), or None for
    a ``charge.refunded`` in the current shape, whose refunds must be listed from the API.
    Raises :class:`InvalidEvent` like :func:`payment_events`."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise InvalidEvent("not a Stripe event (type and data.object)")
    if kind in REFUND_TYPES:
        return [refund_fact(obj, _at(event.get("created")))]
    if kind in DISPUTE_TYPES:
        return [dispute_fact(kind, obj, _at(event.get("created")))]
    if kind == "charge.refunded":
        listed = refunds_listed(obj)
        if listed is None:
            return None
        created = _at(event.get("created"))
        return [refund_fact(r, created) for r in listed]
    return []


_HANDLERS = {
    "checkout.session.completed": _checkout,
    "checkout.session.async_payment_succeeded": _checkout,
    "payment_intent.succeeded": _intent_succeeded,
}
# Every type the webhook acts on (money, attempts, saved payment methods): what the
# reconciler takes in when its webhook never arrived.
HANDLED_TYPES: Final = (
    frozenset(_HANDLERS)
    | REFUND_TYPES
    | DISPUTE_TYPES
    | {
        "charge.refunded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
        "payment_intent.payment_failed",
        "setup_intent.succeeded",
    }
)

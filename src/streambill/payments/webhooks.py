"""Taking in a verified Stripe webhook, exactly once.

The Stripe event id is written to ``stripe_events`` in the same transaction as everything the
event changes: the outbox rows of the payment events it became, the top-up attempt it settles,
the payment method it saved. A redelivery finds the id and changes nothing; two deliveries
racing each other collide on the primary key, and the loser answers like a redelivery. The
payment event ids (see :mod:`.stripe_events`) make a second line of defence in the worker.

Besides money (only ever from :func:`~.stripe_events.payment_events`):

- a Checkout top-up's session (``metadata.attempt_id``) moves its attempt: ``completed``
  and paid -> ``succeeded``, completed but unpaid (SEPA) -> ``processing``,
  ``async_payment_succeeded`` -> ``succeeded``, ``async_payment_failed`` -> ``failed``,
  ``expired`` -> ``expired`` (a Checkout top-up still open; an auto top-up keeps its state,
  its link makes a new session). A succeeded attempt never goes back.
- a completed setup-mode session, or ``setup_intent.succeeded`` with
  ``metadata.customer_id``, saves the payment method for auto top-up. Its label needs two
  Stripe reads, made before the transaction; Stripe unreachable answers 503 (Stripe retries).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.control.models import StripeEvent, Tenant, TopupAttempt
from streambill.control.outbox import enqueue
from streambill.control.plane import ControlPlane
from streambill.errors import InvalidEvent, StreambillError
from streambill.payments.gateway import StripeGateway, StripeProblem, StripeUnreachable
from streambill.payments.methods import keep_payment_method, payment_method_label
from streambill.payments.money import (
    dispute_payments,
    find_customers,
    is_customer,
    listed_refunds,
    record_movements,
    refund_payments,
)
from streambill.payments.payer import PaymentProviderUnavailable
from streambill.payments.stripe_events import (
    DisputeFact,
    RefundFact,
    money_facts,
    payment_events,
)
from streambill.streams.topics import PAYMENTS

log = logging.getLogger(__name__)

_SESSION_STATUS: Final = {
    "checkout.session.async_payment_succeeded": "succeeded",
    "checkout.session.async_payment_failed": "failed",
    "checkout.session.expired": "expired",
}


def decode_event(payload: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("the webhook body is not JSON", code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise InvalidEvent("not a Stripe event (no id)")
    if len(event["id"]) > 255 or not isinstance(event.get("type"), str):
        raise InvalidEvent("not a Stripe event (id or type)")
    return event


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What a Checkout event says about a top-up attempt."""

    attempt_id: str
    customer_id: str
    status: str
    session_id: str | None
    payment_intent_id: str | None


@dataclass(frozen=True, slots=True)
class SetupDone:
    """A payment method a customer saved: where to find it at Stripe."""

    customer_id: str
    stripe_customer: str | None
    setup_intent_id: str | None
    payment_method_id: str | None


@dataclass(frozen=True, slots=True)
class SavedMethod:
    customer_id: str
    stripe_customer: str | None
    payment_method_id: str
    label: str


def _text(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _object(event: dict[str, Any]) -> dict[str, Any]:
    return _dict((event.get("data") or {}).get("object"))


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def attempt_outcome(event: dict[str, Any]) -> AttemptOutcome | None:
    """The attempt status a Checkout Session event stands for (None: not a top-up's).

    >>> attempt_outcome({"type": "checkout.session.completed", "data": {"object": {
    ...     "id": "cs_1", "mode": "payment", "payment_status": "unpaid",
    ...     "payment_intent": "pi_1",
    ...     "metadata": {"attempt_id": "co_c_1", "customer_id": "c"}}}}).status
    'processing'
    """
    kind = event.get("type")
    session = _object(event)
    metadata = _dict(session.get("metadata"))
    attempt_id = _text(metadata.get("attempt_id"))
    customer_id = _text(metadata.get("customer_id"))
    if attempt_id is None or customer_id is None or session.get("mode") != "payment":
        return None
    if kind == "checkout.session.completed":
        status = "succeeded" if session.get("payment_status") == "paid" else "processing"
    elif isinstance(kind, str) and kind in _SESSION_STATUS:
        status = _SESSION_STATUS[kind]
    else:
        return None
    return AttemptOutcome(
        attempt_id, customer_id, status, _text(session), _text(session.get("payment_intent"))
    )


def setup_done(event: dict[str, Any]) -> SetupDone | None:
    """A payment method saved through a setup-mode Checkout or a SetupIntent of ours."""
    kind = event.get("type")
    obj = _object(event)
    metadata = _dict(obj.get("metadata"))
    customer_id = _text(metadata.get("customer_id"))
    if customer_id is None:
        return None
    if kind == "checkout.session.completed" and obj.get("mode") == "setup":
        intent = _text(obj.get("setup_intent"))
        if intent is None:
            raise InvalidEvent("a completed setup session without its setup_intent")
        return SetupDone(customer_id, _text(obj.get("customer")), intent, None)
    if kind == "setup_intent.succeeded":
        pm = _text(obj.get("payment_method"))
        if pm is None:
            raise InvalidEvent("a succeeded setup intent without a payment_method")
        return SetupDone(customer_id, _text(obj.get("customer")), None, pm)
    return None


async def _seen(cp: ControlPlane, event_id: str) -> bool:
    async with cp.sessions() as session:
        return await session.get(StripeEvent, event_id) is not None


async def _look_up(gateway: StripeGateway | None, done: SetupDone) -> SavedMethod | None:
    """The payment method and its label, read from Stripe (before any transaction)."""
    if gateway is None:
        raise StreambillError(
            "Stripe is not configured: cannot read the payment method", code="unavailable"
        )
    try:
        pm_id = done.payment_method_id
        if pm_id is None and done.setup_intent_id is not None:
            intent = await gateway.setup_intent(done.setup_intent_id)
            pm_id = _text(intent.get("payment_method"))
            if intent.get("status") != "succeeded" or pm_id is None:
                log.warning(
                    "setup intent %s is %s: nothing saved", intent.get("id"), intent.get("status")
                )
                return None
        if pm_id is None:
            return None
        pm = await gateway.payment_method(pm_id)
    except StripeUnreachable as exc:
        raise PaymentProviderUnavailable(f"Stripe did not answer: {exc}") from exc
    except StripeProblem as exc:  # gone or not ours: retrying will not help
        log.warning("customer %s: payment method not readable: %s", done.customer_id, exc)
        return None
    return SavedMethod(done.customer_id, done.stripe_customer, pm_id, payment_method_label(pm))


TAKE_IN_ATTEMPTS: Final = 3


async def take_in(
    cp: ControlPlane, event: dict[str, Any], gateway: StripeGateway | None = None
) -> tuple[bool, int]:
    """Record the event and apply it: (new, number of payment events). ``new`` is False for a
    delivery of an event already taken in."""
    topups = payment_events(event)  # raises InvalidEvent before anything is written
    facts = money_facts(event)
    outcome = attempt_outcome(event)
    setup = setup_done(event)
    needs_reads = setup is not None or facts is None or bool(facts)
    if needs_reads and await _seen(cp, event["id"]):
        return False, 0  # no Stripe reads for a redelivery
    if facts is None:  # charge.refunded in the current shape: its refunds are listed
        facts = await listed_refunds(gateway, _object(event), _created(event))
    customers = await find_customers(cp, gateway, facts) if facts else {}
    saved = await _look_up(gateway, setup) if setup is not None else None
    for attempt in range(TAKE_IN_ATTEMPTS):
        try:
            return await _record(cp, event, topups, facts, customers, outcome, saved)
        except IntegrityError:
            # The event's own id: a concurrent delivery won. Another id (the first sighting
            # of a refund or dispute, made by a different event at the same time): this
            # event is not recorded yet, and the next attempt finds the other's row.
            if await _seen(cp, event["id"]) or attempt == TAKE_IN_ATTEMPTS - 1:
                if not await _seen(cp, event["id"]):
                    raise
                return False, 0
    return False, 0  # pragma: no cover - the loop returns or raises


def _created(event: dict[str, Any]) -> str:
    created = event.get("created")
    if type(created) is not int:
        raise InvalidEvent("event.created is not a unix time")
    return datetime.fromtimestamp(created, UTC).isoformat()


async def _record(
    cp: ControlPlane,
    event: dict[str, Any],
    topups: list[dict[str, Any]],
    facts: list[RefundFact | DisputeFact],
    customers: dict[str, str],
    outcome: AttemptOutcome | None,
    saved: SavedMethod | None,
) -> tuple[bool, int]:
    now = cp.clock()
    async with cp.sessions.begin() as session:
        if await session.get(StripeEvent, event["id"]) is not None:
            return False, 0
        session.add(StripeEvent(id=event["id"], type=event["type"], payments=0, received_at=now))
        await session.flush()
        moved = list(topups)
        for fact in facts:
            object_id = fact.refund_id if isinstance(fact, RefundFact) else fact.dispute_id
            customer = customers.get(object_id)
            if customer is None:
                continue  # not a payment of a streambill customer
            if not await is_customer(session, customer):
                log.warning("%s names unknown customer %s: nothing moved", object_id, customer)
                continue
            if isinstance(fact, RefundFact):
                moved += await refund_payments(session, fact, customer, now)
            else:
                moved += await dispute_payments(session, fact, customer, now)
        payments = await record_movements(session, moved, event["id"], now)
        for item in payments:
            enqueue(session, PAYMENTS, item["customer_id"], item, now)
        recorded = await session.get(StripeEvent, event["id"])
        assert recorded is not None
        recorded.payments = len(payments)
        if outcome is not None:
            await _settle(session, outcome, bool(topups), now)
        if saved is not None:
            await _save(session, saved, event["id"], now)
    if payments:
        cp.on_outbox()
    return True, len(payments)


async def _settle(session: SqlSession, outcome: AttemptOutcome, paid: bool, now: datetime) -> None:
    attempt = await session.get(TopupAttempt, outcome.attempt_id, with_for_update=True)
    if attempt is None or attempt.customer_id != outcome.customer_id:
        log.warning("checkout event for unknown top-up %s", outcome.attempt_id)
        return
    if attempt.status == "succeeded":
        return  # settled: a late or repeated announcement changes nothing
    if outcome.status == "expired":
        current = attempt.checkout_session_id in (None, outcome.session_id)
        if (
            attempt.kind == "checkout"
            and current
            and attempt.status in ("pending", "unknown", "open")
        ):
            attempt.status = "expired"
            attempt.updated_at = now
        return
    if outcome.session_id is not None and attempt.kind == "checkout":
        attempt.checkout_session_id = outcome.session_id
    intent = outcome.payment_intent_id
    if intent is not None and intent != attempt.payment_intent_id:
        taken = await session.scalar(
            select(TopupAttempt.id).where(TopupAttempt.payment_intent_id == intent)
        )
        if taken is None:
            attempt.payment_intent_id = intent
            attempt.intent_at = attempt.intent_at or now
    attempt.status = outcome.status
    attempt.next_check_at = None
    attempt.updated_at = now
    if outcome.status == "failed":
        attempt.failure_code = "async_payment_failed"
        attempt.failure_message = "the delayed payment (SEPA Direct Debit) failed"
    elif outcome.status == "succeeded":
        attempt.failure_code = attempt.failure_message = None
        if paid:
            attempt.emitted_at = attempt.emitted_at or now  # its payment event is in the outbox


async def _save(session: SqlSession, saved: SavedMethod, event_id: str, now: datetime) -> None:
    tenant = await session.get(Tenant, saved.customer_id, with_for_update=True)
    if tenant is None or tenant.kind != "customer":
        log.warning("payment method for unknown customer %s", saved.customer_id)
        return
    if saved.stripe_customer and tenant.stripe_customer_id not in (None, saved.stripe_customer):
        log.warning(
            "customer %s: payment method of Stripe customer %s ignored (ours is %s)",
            tenant.id,
            saved.stripe_customer,
            tenant.stripe_customer_id,
        )
        return
    if saved.stripe_customer and tenant.stripe_customer_id is None:
        tenant.stripe_customer_id = saved.stripe_customer
    keep_payment_method(
        session, tenant, saved.payment_method_id, saved.label, now, f"stripe:{event_id}"
    )

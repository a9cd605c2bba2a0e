"""Refunds and disputes: whose money, and whether it moves now, each movement once for ever.

Neither a Refund nor a Dispute carries streambill's customer: the customer is the one whose
top-up was the refunded or disputed payment. It is found (:func:`find_customers`, before any
transaction) through the PaymentIntent the object names, in what streambill recorded: the
top-up attempts (Checkout and auto top-up) and the top-ups credited from webhooks
(``money_movements``); failing that, at Stripe: the PaymentIntent's, or the charge's,
``metadata.customer_id``, which streambill sets on everything it creates. A payment not
streambill's moves nothing.

Then, inside the webhook's transaction, each object's row is locked and its state decides
(:func:`refund_payments`, :func:`dispute_payments`):

=====================================  ============================================
refund seen                             money
=====================================  ============================================
``pending`` or ``succeeded``            debit ``refund`` ``<re id>``, once
``failed`` or ``canceled`` after that   credit ``refund_reversal`` ``<re id>:reversal``, once
``failed`` or ``canceled`` first        nothing, and nothing later (the money never left)
``requires_action``                     nothing yet
=====================================  ============================================

A dispute's ``funds_withdrawn`` debits ``chargeback`` ``<dp id>`` once; ``funds_reinstated``
credits ``chargeback_reversal`` ``<dp id>:reinstated`` once, only after a withdrawal (an
inquiry withdraws nothing). Status changes without money (``created``, ``updated``,
``closed``) only update the row.

Every payment event made here, and every top-up the webhook credits, is recorded in
``money_movements`` under its event id in the same transaction that puts it into the outbox:
a second announcement of the same money, however late, finds the id and sends nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.control.models import (
    MoneyMovement,
    StripeDispute,
    StripeRefund,
    Tenant,
    TopupAttempt,
)
from streambill.control.plane import ControlPlane
from streambill.domain.money import to_micros
from streambill.payments.gateway import StripeGateway, StripeProblem, StripeUnreachable
from streambill.payments.payer import PaymentProviderUnavailable
from streambill.payments.stripe_events import (
    PROVIDER,
    DisputeFact,
    RefundFact,
    major_units,
    refund_fact,
)

log = logging.getLogger(__name__)

Fact = RefundFact | DisputeFact
_FAILED = frozenset({"failed", "canceled"})
_TAKEN = frozenset({"pending", "succeeded"})


async def listed_refunds(
    gateway: StripeGateway | None, charge: dict[str, Any], created: str
) -> list[Fact]:
    """The refunds of a ``charge.refunded`` that no longer lists them, read from Stripe.

    Without Stripe configured there is nothing to read; the refund's own events
    (``refund.created``, ...) carry the same money and are what the endpoint should receive.
    """
    charge_id = charge.get("id")
    if gateway is None or not isinstance(charge_id, str):
        log.info("charge.refunded without its refunds and no Stripe key: left to refund.*")
        return []
    try:
        refunds = await gateway.refunds_of(charge_id)
    except StripeUnreachable as exc:
        raise PaymentProviderUnavailable(f"Stripe did not answer: {exc}") from exc
    except StripeProblem as exc:
        log.warning("refunds of charge %s not readable: %s", charge_id, exc)
        return []
    return [refund_fact(r, created) for r in refunds]


async def find_customers(
    cp: ControlPlane, gateway: StripeGateway | None, facts: list[Fact]
) -> dict[str, str]:
    """Object id -> streambill customer, for each fact whose payment was streambill's."""
    found: dict[str, str] = {}
    for fact in facts:
        object_id = fact.refund_id if isinstance(fact, RefundFact) else fact.dispute_id
        customer = await _recorded(cp, object_id, fact.payment_intent)
        if customer is None:
            customer = await _at_stripe(cp, gateway, fact.payment_intent, fact.charge)
        if customer is not None:
            found[object_id] = customer
    return found


async def _recorded(cp: ControlPlane, object_id: str, intent: str | None) -> str | None:
    async with cp.sessions() as session:
        refund = await session.get(StripeRefund, object_id)
        if refund is not None:
            return refund.customer_id
        dispute = await session.get(StripeDispute, object_id)
        if dispute is not None:
            return dispute.customer_id
        return await _by_intent(session, intent)


async def _by_intent(session: SqlSession, intent: str | None) -> str | None:
    if intent is None:
        return None
    customer = await session.scalar(
        select(TopupAttempt.customer_id).where(TopupAttempt.payment_intent_id == intent)
    )
    if customer is None:
        customer = await session.scalar(
            select(MoneyMovement.customer_id)
            .where(MoneyMovement.payment_intent_id == intent, MoneyMovement.kind == "topup")
            .limit(1)
        )
    return customer


async def _at_stripe(
    cp: ControlPlane, gateway: StripeGateway | None, intent: str | None, charge: str | None
) -> str | None:
    """The customer in the metadata of the charge or PaymentIntent, read from Stripe."""
    if gateway is None:
        log.warning("refund or dispute of %s: not recorded here and no Stripe key", intent)
        return None
    try:
        if intent is None and charge is not None:
            found = await gateway.charge(charge)
            customer = _customer_of(found)
            if customer is not None:
                return customer
            intent = found.get("payment_intent") if isinstance(found, dict) else None
            if not isinstance(intent, str):
                return None
            async with cp.sessions() as session:
                recorded = await _by_intent(session, intent)
            if recorded is not None:
                return recorded
        if intent is None:
            return None
        return _customer_of(await gateway.payment_intent(intent))
    except StripeUnreachable as exc:
        raise PaymentProviderUnavailable(f"Stripe did not answer: {exc}") from exc
    except StripeProblem as exc:  # not found, or not ours
        log.warning("payment %s / charge %s not readable: %s", intent, charge, exc)
        return None


def _customer_of(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    value = metadata.get("customer_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def payment(event_id: str, customer_id: str, kind: str, fact: Fact, ref: str) -> dict[str, Any]:
    """A ``billing.payments.v1`` value for a movement of ``fact``'s amount."""
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "kind": kind,
        "amount": major_units(fact.amount_minor, fact.currency),
        "currency": fact.currency,
        "occurred_at": fact.occurred_at,
        "provider": PROVIDER,
        "provider_ref": ref,
    }


async def is_customer(session: SqlSession, customer_id: str) -> bool:
    tenant = await session.get(Tenant, customer_id)
    return tenant is not None and tenant.kind == "customer"


async def refund_payments(
    session: SqlSession, fact: RefundFact, customer_id: str, now: datetime
) -> list[dict[str, Any]]:
    """Apply what an event says about a refund to its (locked) row; the payments due."""
    row = await session.get(StripeRefund, fact.refund_id, with_for_update=True)
    if row is None:
        row = StripeRefund(
            id=fact.refund_id,
            customer_id=customer_id,
            payment_intent_id=fact.payment_intent,
            charge_id=fact.charge,
            amount_micros=_micros(fact),
            currency=fact.currency,
            status=fact.status,
            updated_at=now,
        )
        session.add(row)
        await session.flush()  # a concurrent first sighting collides here (see take_in)
    out: list[dict[str, Any]] = []
    terminal = row.status in _FAILED
    if fact.status in _TAKEN and not terminal and row.debited_at is None:
        row.debited_at = now
        out.append(payment(fact.refund_id, row.customer_id, "refund", fact, fact.refund_id))
    elif fact.status in _FAILED and row.debited_at is not None and row.reversed_at is None:
        row.reversed_at = now
        out.append(
            payment(
                f"{fact.refund_id}:reversal",
                row.customer_id,
                "refund_reversal",
                fact,
                fact.refund_id,
            )
        )
    if not terminal:
        row.status = fact.status
    row.updated_at = now
    return out


async def dispute_payments(
    session: SqlSession, fact: DisputeFact, customer_id: str, now: datetime
) -> list[dict[str, Any]]:
    """Apply what an event says about a dispute to its (locked) row; the payments due."""
    row = await session.get(StripeDispute, fact.dispute_id, with_for_update=True)
    if row is None:
        row = StripeDispute(
            id=fact.dispute_id,
            customer_id=customer_id,
            payment_intent_id=fact.payment_intent,
            charge_id=fact.charge,
            amount_micros=_micros(fact),
            currency=fact.currency,
            status=fact.status[:40],
            updated_at=now,
        )
        session.add(row)
        await session.flush()
    out: list[dict[str, Any]] = []
    if fact.movement == "withdrawn" and row.withdrawn_at is None:
        row.withdrawn_at = now
        if row.reinstated_at is None:  # a reinstatement seen first nets the two out
            out.append(
                payment(fact.dispute_id, row.customer_id, "chargeback", fact, fact.dispute_id)
            )
    elif fact.movement == "reinstated" and row.reinstated_at is None:
        row.reinstated_at = now
        if row.withdrawn_at is not None:
            out.append(
                payment(
                    f"{fact.dispute_id}:reinstated",
                    row.customer_id,
                    "chargeback_reversal",
                    fact,
                    fact.dispute_id,
                )
            )
    if fact.status:
        row.status = fact.status[:40]
    row.updated_at = now
    return out


async def record_movements(
    session: SqlSession, payments: list[dict[str, Any]], stripe_event_id: str, now: datetime
) -> list[dict[str, Any]]:
    """Record each payment event in ``money_movements``; the ones not recorded before (a
    recorded id was sent already and is never sent again)."""
    fresh = []
    for item in payments:
        if await session.get(MoneyMovement, item["event_id"]) is not None:
            continue
        intent = item["provider_ref"] if item["kind"] == "topup" else None
        session.add(
            MoneyMovement(
                event_id=item["event_id"],
                customer_id=item["customer_id"],
                kind=item["kind"],
                amount_micros=to_micros(Decimal(item["amount"])),
                currency=item["currency"],
                payment_intent_id=intent,
                stripe_event_id=stripe_event_id,
                created_at=now,
            )
        )
        fresh.append(item)
    if fresh:
        await session.flush()
    return fresh


def _micros(fact: Fact) -> int:
    return to_micros(Decimal(major_units(fact.amount_minor, fact.currency)))

"""Manual credits and debits by the admin or the owning reseller.

An adjustment becomes an ``adjustment`` payment event on ``billing.payments.v1`` through the
outbox, so only the balances agent moves money. Its ``event_id`` is derived from the customer
and the caller's idempotency key: a retried request returns the first adjustment and never
produces a second event (and the worker would drop a repeated event id anyway).
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from streambill.control.models import Adjustment
from streambill.control.outbox import enqueue
from streambill.control.plane import ControlPlane, audit, page_by_id, visible_customer
from streambill.control.principal import Principal
from streambill.control.schemas import AdjustmentCreate, AdjustmentPublic, Page
from streambill.control.security import new_id
from streambill.domain.money import to_micros
from streambill.errors import Conflict, Forbidden
from streambill.streams.topics import PAYMENTS


def adjustment_event_id(customer_id: str, idempotency_key: str) -> str:
    """The payment event id: stable for one customer and idempotency key.

    >>> adjustment_event_id("cus_1", "k1") == adjustment_event_id("cus_1", "k1")
    True
    >>> adjustment_event_id("cus_1", "k1") != adjustment_event_id("cus_2", "k1")
    True
    """
    raw = f"{customer_id}\x00{idempotency_key}".encode()
    return "adj_" + hashlib.sha256(raw).hexdigest()[:40]


def adjustment_public(row: Adjustment) -> AdjustmentPublic:
    return AdjustmentPublic.model_validate(row, from_attributes=True)


async def create_adjustment(
    cp: ControlPlane,
    p: Principal,
    customer_id: str,
    body: AdjustmentCreate,
    idempotency_key: str | None,
) -> tuple[AdjustmentPublic, bool]:
    """The adjustment, and whether this call created it (False: an idempotent repeat)."""
    key = idempotency_key or secrets.token_urlsafe(18)
    event_id = adjustment_event_id(customer_id, key)
    now = cp.clock()
    async with cp.sessions.begin() as session:
        tenant = await visible_customer(session, p, customer_id)
        if not (p.is_admin or p.role == "reseller"):
            raise Forbidden("only the admin or the owning reseller adjusts a balance")
        existing = await session.scalar(select(Adjustment).where(Adjustment.event_id == event_id))
        if existing is not None:
            if existing.amount != body.amount:
                raise Conflict("this Idempotency-Key was used for another amount")
            return adjustment_public(existing), False
        if tenant.status == "closed":
            raise Conflict(f"customer {customer_id!r} is closed")
        row = Adjustment(
            id=new_id("adj"),
            customer_id=customer_id,
            idempotency_key=key,
            event_id=event_id,
            amount=body.amount,
            amount_micros=to_micros(body.amount),
            currency=tenant.currency,
            reason=body.reason,
            actor=p.label(),
            created_at=now,
        )
        session.add(row)
        event = {
            "event_id": event_id,
            "customer_id": customer_id,
            "kind": "adjustment",
            "amount": body.amount,
            "currency": tenant.currency,
            "occurred_at": now.isoformat(),
            "provider": "streambill",
            "provider_ref": row.id,
            "reason": body.reason,
            "actor": row.actor,
        }
        enqueue(session, PAYMENTS, customer_id, event, now)
        audit(
            session,
            now,
            p,
            "customer.adjust",
            customer_id,
            {"amount": body.amount, "reason": body.reason, "event_id": event_id},
        )
        result = adjustment_public(row)
    cp.on_outbox()
    return result, True


async def list_adjustments(
    cp: ControlPlane, p: Principal, customer_id: str, *, limit: int, cursor: str | None
) -> Page[AdjustmentPublic]:
    async with cp.sessions() as session:
        await visible_customer(session, p, customer_id)
    query = select(Adjustment).where(Adjustment.customer_id == customer_id)
    return await page_by_id(cp, query, Adjustment.id, limit, cursor, adjustment_public)

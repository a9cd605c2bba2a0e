"""Checkout top-ups: the operations behind the top-up routes and GraphQL's ``createTopup``.
Saved payment methods are in :mod:`.methods`; who may pay, in :mod:`.payer`.

A top-up is recorded before Stripe hears of it, like an auto top-up (:mod:`.autotopup`):

1. The customer (itself, its reseller or the admin; never a service key) asks for an amount
   within :data:`TOPUP_LIMITS_MICROS`. Its Stripe customer is made on first use under the
   idempotency key ``customer:<id>``, so two first top-ups at once make one.
2. The attempt is written (``pending``, the customer's next Checkout number, taken under a
   lock on the tenant row) with a deterministic idempotency key: ``checkout:<customer>:<n>``,
   or, when the request carries ``Idempotency-Key``, one derived from it, so a retried POST
   finds the attempt instead of making another.
3. The Checkout Session is created under the attempt's key. Stripe answering: ``open`` with
   the session's URL. No answer (timeout, connection lost, 5xx): ``unknown`` and 503
   ``payment_provider_unavailable``; the retry with the same ``Idempotency-Key`` calls again
   under the same Stripe idempotency key, which returns the session if the first call made one.
4. Money moves only when Stripe says it did: the webhook (:mod:`.webhooks`) turns the paid
   session into the ``topup`` payment event and marks the attempt.

An auto top-up that needs the customer (``requires_action``) or failed carries a link to
``/v2/topups/<id>/checkout``: :func:`checkout_link` makes (or reuses, while open) a Checkout
Session for the same amount, tagged with the same attempt.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from streambill.control.models import Tenant, TopupAttempt
from streambill.control.plane import ControlPlane, audit, page_by_id, visible_customer
from streambill.control.principal import Principal
from streambill.control.schemas import Page, TopupCreate, TopupPublic
from streambill.domain.money import MICROS_PER_UNIT, format_micros, parse_decimal, to_micros
from streambill.errors import Conflict, NotFound, StreambillError
from streambill.payments.gateway import StripeProblem, StripeUnreachable
from streambill.payments.payer import (
    Payments,
    check_return_urls,
    payer,
    stripe_customer,
    stripe_failure,
)
from streambill.payments.stripe_events import MINOR_UNITS

log = logging.getLogger(__name__)

# Per currency: the smallest and the largest single top-up, in micros.
TOPUP_LIMITS_MICROS: Final = {
    "EUR": (5 * MICROS_PER_UNIT, 10_000 * MICROS_PER_UNIT),
    "USD": (5 * MICROS_PER_UNIT, 10_000 * MICROS_PER_UNIT),
    "GBP": (5 * MICROS_PER_UNIT, 10_000 * MICROS_PER_UNIT),
}
# A Checkout top-up's session expires this long after the attempt was recorded (Stripe allows
# 30 min..24 h). Derived from the attempt, so a retried call sends the same parameters.
CHECKOUT_TTL: Final = timedelta(hours=12)
# Stripe refuses an expiry closer than 30 minutes; a retry later than this gives up.
CHECKOUT_MIN_LEFT: Final = timedelta(minutes=35)
PRODUCT_NAME: Final = "Guthaben-Aufladung / Top-up"
RECORD_TRIES: Final = 5
OPEN_STATES: Final = ("pending", "unknown")


class AmountOutOfRange(StreambillError):
    code = "amount_out_of_range"


# Pure parts
def check_amount(amount: str, currency: str) -> int:
    """A top-up amount in micros, within the currency's limits and in whole minor units.

    >>> check_amount("20.00", "EUR")
    20000000
    >>> check_amount("4.99", "EUR")
    Traceback (most recent call last):
    ...
    streambill.payments.checkout.AmountOutOfRange: a top-up is 5.00..10000.00 EUR, not 4.99
    >>> check_amount("20.005", "GBP")
    Traceback (most recent call last):
    ...
    streambill.errors.StreambillError: amount: GBP has 2 decimals, not 20.005
    """
    value = parse_decimal(amount, field="amount")
    low, high = TOPUP_LIMITS_MICROS[currency]
    if not low <= value * MICROS_PER_UNIT <= high:
        raise AmountOutOfRange(
            f"a top-up is {format_micros(low)}..{format_micros(high)} {currency}, not {amount}"
        )
    micros = to_micros(value)
    digits = MINOR_UNITS[currency]
    if micros != value * MICROS_PER_UNIT or micros % (MICROS_PER_UNIT // 10**digits):
        raise StreambillError(
            f"amount: {currency} has {digits} decimals, not {amount}", code="invalid_request"
        )
    return micros


def minor_units(micros: int, currency: str) -> int:
    """
    >>> minor_units(20_000_000, "EUR")
    2000
    """
    return micros // (MICROS_PER_UNIT // 10 ** MINOR_UNITS[currency])


def payment_method_types(currency: str) -> list[str]:
    """Cards everywhere; SEPA Direct Debit for euro accounts.

    >>> payment_method_types("EUR"), payment_method_types("GBP")
    (['card', 'sepa_debit'], ['card'])
    """
    return ["card", "sepa_debit"] if currency == "EUR" else ["card"]


def topup_key(customer_id: str, request_key: str) -> str:
    """The attempt's idempotency key for a request's ``Idempotency-Key`` (hashed: bounded
    length, and the caller's key never reaches Stripe).

    >>> topup_key("cus_1", "k1") == topup_key("cus_1", "k1") != topup_key("cus_2", "k1")
    True
    """
    digest = hashlib.sha256(request_key.encode()).hexdigest()[:32]
    return f"checkout:{customer_id}:key:{digest}"


def _metadata(tenant: Tenant, attempt: TopupAttempt) -> dict[str, str]:
    metadata = {"customer_id": tenant.id, "attempt_id": attempt.id, "topup": attempt.kind}
    if tenant.parent_id:
        metadata["reseller_id"] = tenant.parent_id
    return metadata


def payment_session_params(
    tenant: Tenant,
    attempt: TopupAttempt,
    *,
    stripe_customer: str,
    save: bool,
    success_url: str,
    cancel_url: str,
    expires_at: datetime,
) -> dict[str, Any]:
    """The Checkout Session of a top-up (mode ``payment``)."""
    metadata = _metadata(tenant, attempt)
    intent: dict[str, Any] = {
        "metadata": metadata,
        "description": f"Top-up {attempt.id}",
    }
    if save:
        intent["setup_future_usage"] = "off_session"
    currency = attempt.currency.lower()
    return {
        "mode": "payment",
        "customer": stripe_customer,
        "client_reference_id": attempt.id,
        "currency": currency,
        "payment_method_types": payment_method_types(attempt.currency),
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency,
                    "unit_amount": minor_units(attempt.amount_micros, attempt.currency),
                    "product_data": {"name": PRODUCT_NAME},
                },
            }
        ],
        "metadata": metadata,
        "payment_intent_data": intent,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "expires_at": int(expires_at.timestamp()),
    }


def topup_public(row: TopupAttempt) -> TopupPublic:
    checkout = row.kind == "checkout"
    return TopupPublic(
        id=row.id,
        customer_id=row.customer_id,
        kind="checkout" if checkout else "auto",
        number=row.number,
        status=row.status,  # type: ignore[arg-type]  # the model's documented states
        amount=format_micros(row.amount_micros),
        amount_micros=row.amount_micros,
        currency=row.currency,
        checkout_url=row.action_url if checkout and row.status == "open" else None,
        checkout_session_id=row.checkout_session_id,
        expires_at=row.created_at + CHECKOUT_TTL if checkout else None,
        payment_intent_id=row.payment_intent_id,
        failure_code=row.failure_code,
        action_url=None if checkout else row.action_url,
        created_at=row.created_at,
        updated_at=row.updated_at,
        credited_at=row.credited_at,
    )


# Top-ups
async def create_topup(
    pay: Payments,
    p: Principal,
    customer_id: str,
    body: TopupCreate,
    idempotency_key: str | None,
) -> tuple[TopupPublic, bool]:
    """The attempt with its Checkout URL, and whether this call created it."""
    tenant = await payer(pay.cp, p, customer_id)
    amount_micros = check_amount(body.amount, tenant.currency)
    await check_return_urls(pay, tenant, body.success_url, body.cancel_url)
    gateway = pay.stripe()
    key = topup_key(customer_id, idempotency_key) if idempotency_key else None
    existing = await _attempt_by_key(pay.cp, key) if key else None
    created = existing is None
    if existing is not None:
        if existing.amount_micros != amount_micros:
            raise Conflict("this Idempotency-Key was used for another amount")
        attempt = existing
        if attempt.status not in OPEN_STATES:
            return topup_public(attempt), False
    # Before the attempt is written: a Stripe outage here leaves nothing half-done.
    sc = await stripe_customer(pay, tenant)
    if existing is None:
        attempt, created = await _record(pay.cp, p, tenant, amount_micros, key)
        if attempt.status not in OPEN_STATES:
            return topup_public(attempt), created
    if attempt.created_at + CHECKOUT_TTL - pay.cp.clock() < CHECKOUT_MIN_LEFT:
        return topup_public(await _update(pay.cp, attempt.id, status="expired")), created
    base = f"{pay.public_url}/v2/topups/{attempt.id}"
    params = payment_session_params(
        tenant,
        attempt,
        stripe_customer=sc,
        save=body.save_payment_method,
        success_url=body.success_url or f"{base}?checkout=success",
        cancel_url=body.cancel_url or f"{base}?checkout=cancel",
        expires_at=attempt.created_at + CHECKOUT_TTL,
    )
    try:
        session = await gateway.create_checkout_session(params, attempt.idempotency_key)
    except StripeProblem as exc:
        if exc.code == "idempotency_error":  # a retry that changed more than its key allows
            raise Conflict("this Idempotency-Key was used with other parameters") from exc
        status = "unknown" if isinstance(exc, StripeUnreachable) else "failed"
        await _update(pay.cp, attempt.id, status=status, problem=exc)
        log.warning("top-up %s: checkout session not made: %s", attempt.id, exc)
        raise stripe_failure(exc, "the checkout session") from exc
    row = await _update(
        pay.cp,
        attempt.id,
        status="open",
        session_id=str(session["id"]),
        url=str(session.get("url") or ""),
    )
    return topup_public(row), created


async def _attempt_by_key(cp: ControlPlane, key: str) -> TopupAttempt | None:
    async with cp.sessions() as session:
        query = select(TopupAttempt).where(TopupAttempt.idempotency_key == key)
        return (await session.execute(query)).scalar_one_or_none()


async def _record(
    cp: ControlPlane, p: Principal, tenant: Tenant, amount_micros: int, key: str | None
) -> tuple[TopupAttempt, bool]:
    """Write the attempt under the customer's next number (retried when a concurrent request
    took the number, or, with the same key, made the attempt first)."""
    for _ in range(RECORD_TRIES):
        now = cp.clock()
        try:
            async with cp.sessions.begin() as session:
                await session.get(Tenant, tenant.id, with_for_update=True)
                number = 1 + (
                    await session.scalar(
                        select(func.coalesce(func.max(TopupAttempt.number), 0)).where(
                            TopupAttempt.customer_id == tenant.id,
                            TopupAttempt.kind == "checkout",
                        )
                    )
                    or 0
                )
                attempt = TopupAttempt(
                    id=f"co_{tenant.id}_{number}",
                    customer_id=tenant.id,
                    kind="checkout",
                    number=number,
                    idempotency_key=key or f"checkout:{tenant.id}:{number}",
                    amount_micros=amount_micros,
                    currency=tenant.currency,
                    status="pending",
                    created_at=now,
                    updated_at=now,
                    calls=0,
                )
                session.add(attempt)
                await session.flush()
                audit(
                    session,
                    now,
                    p,
                    "topup.create",
                    tenant.id,
                    {"attempt_id": attempt.id, "amount": format_micros(amount_micros)},
                )
            return attempt, True
        except (IntegrityError, OperationalError):
            if key is not None and (found := await _attempt_by_key(cp, key)) is not None:
                if found.amount_micros != amount_micros:
                    raise Conflict("this Idempotency-Key was used for another amount") from None
                return found, False
    raise Conflict("too many top-ups at once for this customer; retry")


async def _update(
    cp: ControlPlane,
    attempt_id: str,
    *,
    status: str,
    session_id: str | None = None,
    url: str | None = None,
    problem: StripeProblem | None = None,
) -> TopupAttempt:
    """Record what the session call gave; a webhook that got there first is not undone."""
    async with cp.sessions.begin() as session:
        row = await session.get(TopupAttempt, attempt_id, with_for_update=True)
        if row is None:
            raise NotFound(f"top-up {attempt_id!r} not found")
        row.calls += 1
        row.updated_at = cp.clock()
        if session_id is not None and row.checkout_session_id in (None, session_id):
            row.checkout_session_id = session_id
            row.action_url = url or None
        if row.status in OPEN_STATES:
            row.status = status
            if problem is not None:
                row.failure_code = (problem.code or type(problem).__name__)[:64]
                row.failure_message = str(problem)[:500]
            else:
                row.failure_code = row.failure_message = None
    return row


async def list_topups(
    cp: ControlPlane, p: Principal, customer_id: str, *, limit: int, cursor: str | None
) -> Page[TopupPublic]:
    async with cp.sessions() as session:
        await visible_customer(session, p, customer_id)
    query = select(TopupAttempt).where(TopupAttempt.customer_id == customer_id)
    return await page_by_id(cp, query, TopupAttempt.id, limit, cursor, topup_public)


async def get_topup(cp: ControlPlane, p: Principal, attempt_id: str) -> TopupPublic:
    async with cp.sessions() as session:
        row = await session.get(TopupAttempt, attempt_id)
    if row is None or not await cp.sees_customer(p, row.customer_id):
        raise NotFound(f"top-up {attempt_id!r} not found")
    return topup_public(row)


async def checkout_link(pay: Payments, p: Principal, attempt_id: str) -> str:
    """The Checkout URL that pays an auto top-up which needs the customer."""
    async with pay.cp.sessions() as session:
        row = await session.get(TopupAttempt, attempt_id)
    if row is None or not await pay.cp.sees_customer(p, row.customer_id):
        raise NotFound(f"top-up {attempt_id!r} not found")
    tenant = await payer(pay.cp, p, row.customer_id)
    if row.kind != "auto" or row.status not in ("requires_action", "failed"):
        raise Conflict(f"top-up {attempt_id!r} is {row.kind}, {row.status}: nothing to pay here")
    gateway = pay.stripe()
    previous = row.checkout_session_id
    try:
        if previous is not None:
            found = await gateway.checkout_session(previous)
            if found.get("status") == "open" and found.get("url"):
                return str(found["url"])
            if found.get("status") == "complete":
                raise Conflict(f"top-up {attempt_id!r} is paid; its credit is on the way")
        sc = await stripe_customer(pay, tenant)
        now = pay.cp.clock()
        params = payment_session_params(
            tenant,
            row,
            stripe_customer=sc,
            save=False,
            success_url=f"{pay.public_url}/v2/topups/{row.id}?checkout=success",
            cancel_url=f"{pay.public_url}/v2/topups/{row.id}?checkout=cancel",
            expires_at=now + CHECKOUT_TTL,
        )
        made = await gateway.create_checkout_session(
            params, f"checkout:{row.id}:after:{previous or 'none'}"
        )
    except StripeProblem as exc:
        raise stripe_failure(exc, "the checkout session") from exc
    async with pay.cp.sessions.begin() as session:
        locked = await session.get(TopupAttempt, attempt_id, with_for_update=True)
        if locked is not None and locked.checkout_session_id == previous:
            locked.checkout_session_id = str(made["id"])
            locked.updated_at = now
        audit(session, now, p, "topup.checkout", row.customer_id, {"attempt_id": row.id})
    return str(made["url"])

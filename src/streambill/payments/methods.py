"""Saved payment methods: the operations behind the payment-method routes, and what the
setup webhooks (:mod:`.webhooks`) use to keep one.

Auto top-up (:mod:`.autotopup`) charges the payment method saved on the customer: a card or
a SEPA Direct Debit mandate, saved through a setup-mode Checkout Session
(:func:`setup_session`, stored by the ``checkout.session.completed`` webhook) or attached
directly after Stripe.js confirmed it (:func:`set_payment_method`). Only its id and a label
(:func:`payment_method_label`) are kept; card numbers never reach streambill. Who may manage
it, and the customer's Stripe customer, are as for top-ups (:mod:`.checkout`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.control.models import AuditRecord, Tenant
from streambill.control.plane import audit
from streambill.control.principal import Principal
from streambill.control.schemas import CheckoutLink, PaymentMethodSetup
from streambill.errors import NotFound, StreambillError
from streambill.payments.checkout import CHECKOUT_TTL, payment_method_types
from streambill.payments.gateway import StripeDeclined, StripeProblem, StripeRejected
from streambill.payments.payer import (
    Payments,
    check_return_urls,
    payer,
    stripe_customer,
    stripe_failure,
)

log = logging.getLogger(__name__)

SAVEABLE_TYPES: Final = frozenset({"card", "sepa_debit"})


class InvalidPaymentMethod(StreambillError):
    code = "invalid_payment_method"


def payment_method_label(pm: dict[str, Any]) -> str:
    """What a customer recognises a payment method by; nothing more leaves Stripe.

    >>> payment_method_label({"type": "card", "card": {"brand": "visa", "last4": "4242"}})
    'Visa •••• 4242'
    >>> payment_method_label({"type": "sepa_debit", "sepa_debit": {"last4": "3000"}})
    'SEPA •••• 3000'
    """
    kind = str(pm.get("type") or "")
    found = pm.get(kind)
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    last4 = str(details.get("last4") or "")[-4:]
    if kind == "card":
        brand = str(details.get("brand") or "card")
        name = {"amex": "American Express", "mastercard": "Mastercard"}.get(brand, brand.title())
    elif kind == "sepa_debit":
        name = "SEPA"
    else:
        name = kind.replace("_", " ").title() or "Payment method"
    return f"{name} •••• {last4}" if last4 else name


async def setup_session(
    pay: Payments,
    p: Principal,
    customer_id: str,
    body: PaymentMethodSetup,
    idempotency_key: str | None,
) -> CheckoutLink:
    """A Checkout Session in setup mode: the customer saves a card or a SEPA mandate; the
    ``checkout.session.completed`` webhook stores it."""
    tenant = await payer(pay.cp, p, customer_id)
    await check_return_urls(pay, tenant, body.success_url, body.cancel_url)
    gateway = pay.stripe()
    sc = await stripe_customer(pay, tenant)
    metadata = {"customer_id": tenant.id, "purpose": "payment_method"}
    if tenant.parent_id:
        metadata["reseller_id"] = tenant.parent_id
    back = f"{pay.public_url}/v2/customers/{tenant.id}"
    expires_at = pay.cp.clock() + CHECKOUT_TTL
    params = {
        "mode": "setup",
        "customer": sc,
        "currency": tenant.currency.lower(),
        "payment_method_types": payment_method_types(tenant.currency),
        "metadata": metadata,
        "setup_intent_data": {"metadata": metadata},
        "success_url": body.success_url or f"{back}?setup=success",
        "cancel_url": body.cancel_url or f"{back}?setup=cancel",
        "expires_at": int(expires_at.timestamp()),
    }
    raw = idempotency_key or secrets.token_urlsafe(18)
    key = "setup:" + hashlib.sha256(f"{tenant.id}\x00{raw}".encode()).hexdigest()[:40]
    try:
        made = await gateway.create_checkout_session(params, key)
    except StripeProblem as exc:
        raise stripe_failure(exc, "the setup session") from exc
    return CheckoutLink(
        checkout_url=str(made["url"]),
        checkout_session_id=str(made["id"]),
        expires_at=expires_at,
    )


async def set_payment_method(
    pay: Payments, p: Principal, customer_id: str, payment_method_id: str
) -> str:
    """Attach a payment method (confirmed in the browser with Stripe.js) to the customer's
    Stripe customer and keep it for auto top-up. Returns its label."""
    tenant = await payer(pay.cp, p, customer_id)
    gateway = pay.stripe()
    sc = await stripe_customer(pay, tenant)
    try:
        pm = await gateway.payment_method(payment_method_id)
        owner = pm.get("customer")
        owner = owner.get("id") if isinstance(owner, dict) else owner
        if owner not in (None, sc):
            raise InvalidPaymentMethod("this payment method belongs to another customer")
        if pm.get("type") not in SAVEABLE_TYPES:
            raise InvalidPaymentMethod(f"auto top-up takes cards and SEPA, not {pm.get('type')}")
        if owner is None:
            pm = await gateway.attach_payment_method(payment_method_id, sc)
    except (StripeRejected, StripeDeclined) as exc:
        raise InvalidPaymentMethod(f"Stripe refused the payment method: {exc}") from exc
    except StripeProblem as exc:
        raise stripe_failure(exc, "the payment method") from exc
    label = payment_method_label(pm)
    now = pay.cp.clock()
    async with pay.cp.sessions.begin() as session:
        row = await session.get(Tenant, customer_id, with_for_update=True)
        if row is None:
            raise NotFound(f"customer {customer_id!r} not found")
        keep_payment_method(session, row, str(pm["id"]), label, now, p.label())
    return label


def keep_payment_method(
    session: SqlSession, tenant: Tenant, pm_id: str, label: str, now: datetime, actor: str
) -> None:
    """Store a payment method on the tenant (in the caller's transaction), audited."""
    tenant.payment_method_id = pm_id
    tenant.payment_method_label = label[:128]
    tenant.updated_at = now
    session.add(
        AuditRecord(
            at=now,
            actor=actor,
            action="customer.payment_method",
            target=tenant.id,
            details={"label": tenant.payment_method_label},
        )
    )


async def remove_payment_method(pay: Payments, p: Principal, customer_id: str) -> None:
    """Forget the saved payment method (auto top-up stops charging); detached at Stripe too
    when it can be."""
    await payer(pay.cp, p, customer_id)
    now = pay.cp.clock()
    async with pay.cp.sessions.begin() as session:
        row = await session.get(Tenant, customer_id, with_for_update=True)
        if row is None:
            raise NotFound(f"customer {customer_id!r} not found")
        removed = row.payment_method_id
        if removed is None:
            return
        row.payment_method_id = row.payment_method_label = None
        row.updated_at = now
        audit(session, now, p, "customer.payment_method.remove", customer_id, {})
    if pay.gateway is not None:
        try:
            await pay.gateway.detach_payment_method(removed)
        except StripeProblem as exc:  # forgotten here already: nothing charges it any more
            log.warning("customer %s: detaching %s at Stripe failed: %s", customer_id, removed, exc)

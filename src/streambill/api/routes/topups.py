"""Top-ups through Stripe Checkout, the auto top-up's payment link, and the payment method
saved for auto top-up. The operations live in :mod:`streambill.payments.checkout` and
:mod:`streambill.payments.methods`.

Who: the customer itself, its reseller and the admin; service keys 403; another tenant's
customer or attempt 404. Stripe not configured: 503 ``unavailable``; Stripe not answering:
503 ``payment_provider_unavailable`` (retry with the same ``Idempotency-Key``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import RedirectResponse

from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.control import tenants
from streambill.control.schemas import (
    CheckoutLink,
    Page,
    PaymentMethodSet,
    PaymentMethodSetup,
    TenantPublic,
    TopupCreate,
    TopupPublic,
)
from streambill.payments import checkout, methods

router = APIRouter(tags=["payments"])
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
AttemptId = Annotated[str, Path(min_length=1, max_length=160, pattern=ANY_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=128)]


@router.post("/v2/customers/{customer_id}/topups", response_model=TopupPublic, status_code=201)
async def create_topup(
    customer_id: CustomerId,
    body: TopupCreate,
    runtime: Runtime,
    principal: CurrentPrincipal,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TopupPublic:
    """Start a top-up: the answer's ``checkout_url`` is Stripe Checkout for the amount (card,
    and SEPA Direct Debit for EUR). The balance rises when Stripe reports the payment.

    With an ``Idempotency-Key`` a retry returns the same attempt (200) and never a second
    session; the same key for another amount is 409. 422 ``amount_out_of_range`` outside
    5.00..10,000.00."""
    result, created = await checkout.create_topup(
        runtime.payments(), principal, customer_id, body, idempotency_key
    )
    if not created:
        response.status_code = 200
    return result


@router.get("/v2/customers/{customer_id}/topups", response_model=Page[TopupPublic])
async def list_topups(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[TopupPublic]:
    """The customer's top-up attempts (Checkout and auto), ordered by id."""
    return await checkout.list_topups(
        runtime.control, principal, customer_id, limit=limit, cursor=cursor
    )


@router.get("/v2/topups/{attempt_id}", response_model=TopupPublic)
async def get_topup(
    attempt_id: AttemptId, runtime: Runtime, principal: CurrentPrincipal
) -> TopupPublic:
    return await checkout.get_topup(runtime.control, principal, attempt_id)


@router.get(
    "/v2/topups/{attempt_id}/checkout",
    response_class=RedirectResponse,
    status_code=303,
    responses={303: {"description": "To Stripe Checkout for the attempt's amount."}},
)
async def pay_topup(
    attempt_id: AttemptId, runtime: Runtime, principal: CurrentPrincipal
) -> RedirectResponse:
    """The link of a ``topup_requires_action`` alert: pays an auto top-up that needs the
    customer (authentication) or failed, in Stripe Checkout. 409 for any other attempt."""
    url = await checkout.checkout_link(runtime.payments(), principal, attempt_id)
    return RedirectResponse(url, status_code=303)


@router.post(
    "/v2/customers/{customer_id}/payment-methods/setup",
    response_model=CheckoutLink,
    status_code=201,
)
async def setup_payment_method(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    body: PaymentMethodSetup | None = None,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutLink:
    """Stripe Checkout in setup mode: the customer saves a card (or a SEPA mandate for EUR)
    for auto top-up; it is stored when Stripe reports the session complete."""
    return await methods.setup_session(
        runtime.payments(), principal, customer_id, body or PaymentMethodSetup(), idempotency_key
    )


@router.put("/v2/customers/{customer_id}/payment-method", response_model=TenantPublic)
async def set_payment_method(
    customer_id: CustomerId, body: PaymentMethodSet, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    """Save a payment method confirmed in the browser (Stripe.js SetupIntent): attached to
    the customer at Stripe, shown as its label. 422 ``invalid_payment_method`` when Stripe
    does not know it, it belongs to someone else, or it is neither a card nor SEPA."""
    await methods.set_payment_method(
        runtime.payments(), principal, customer_id, body.payment_method_id
    )
    return await tenants.get_tenant(runtime.control, principal, "customer", customer_id)


@router.delete("/v2/customers/{customer_id}/payment-method", status_code=204)
async def remove_payment_method(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal
) -> Response:
    """Forget the saved payment method: auto top-up stops charging it."""
    await methods.remove_payment_method(runtime.payments(), principal, customer_id)
    return Response(status_code=204)

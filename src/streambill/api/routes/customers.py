"""Customers: the account, its balance and ledger (CONTRACT section 5), and adjustments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from streambill.api import mlreads, reads
from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.api.schemas import BalancePublic, ForecastPublic, LedgerPage
from streambill.control import adjustments, tenants
from streambill.control.schemas import (
    AdjustmentCreate,
    AdjustmentPublic,
    CustomerCreate,
    CustomerUpdate,
    Page,
    Status,
    TenantPublic,
)

router = APIRouter(prefix="/v2/customers", tags=["customers"])
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("", response_model=TenantPublic, status_code=201)
async def create_customer(
    body: CustomerCreate, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    """Create a customer (the admin, or a reseller for itself). Its account, prices and auto
    top-up reach the worker through ``billing.accounts.v1``."""
    return await tenants.create_customer(runtime.control, principal, body)


@router.get("", response_model=Page[TenantPublic])
async def list_customers(
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
    reseller_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
    status: Status | None = None,
) -> Page[TenantPublic]:
    """Customers in scope, ordered by id; filter by reseller and status."""
    return await tenants.list_tenants(
        runtime.control,
        principal,
        "customer",
        limit=limit,
        cursor=cursor,
        reseller_id=reseller_id,
        status=status,
    )


@router.get("/{customer_id}", response_model=TenantPublic)
async def get_customer(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    return await tenants.get_tenant(runtime.control, principal, "customer", customer_id)


@router.patch("/{customer_id}", response_model=TenantPublic)
async def update_customer(
    customer_id: CustomerId, body: CustomerUpdate, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    """Change name, prices, status (``suspended``, ``closed``: final) or auto top-up. A
    customer may change only its own auto top-up and low-balance threshold."""
    return await tenants.update_tenant(runtime.control, principal, "customer", customer_id, body)


@router.post("/{customer_id}/adjustments", response_model=AdjustmentPublic, status_code=201)
async def create_adjustment(
    customer_id: CustomerId,
    body: AdjustmentCreate,
    runtime: Runtime,
    principal: CurrentPrincipal,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None,
) -> AdjustmentPublic:
    """Credit (positive) or debit (negative) a balance by hand, with a reason; audited.

    Send an ``Idempotency-Key`` header: a retry with the same key returns the first
    adjustment (200) and moves no money twice."""
    result, created = await adjustments.create_adjustment(
        runtime.control, principal, customer_id, body, idempotency_key
    )
    if not created:
        response.status_code = 200
    return result


@router.get("/{customer_id}/adjustments", response_model=Page[AdjustmentPublic])
async def list_adjustments(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AdjustmentPublic]:
    return await adjustments.list_adjustments(
        runtime.control, principal, customer_id, limit=limit, cursor=cursor
    )


@router.get("/{customer_id}/balance", response_model=BalancePublic)
async def get_balance(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal
) -> BalancePublic:
    """The balance after the customer's latest ledger entry (live, not one flush behind)."""
    return await reads.balance(runtime, principal, customer_id)


@router.get("/{customer_id}/ledger", response_model=LedgerPage)
async def get_ledger(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> LedgerPage:
    """Entries newest first; page with ``before_seq``. Includes entries not yet flushed."""
    return await reads.ledger(runtime, principal, customer_id, limit, before_seq)


@router.get("/{customer_id}/forecast", response_model=ForecastPublic)
async def get_forecast(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal
) -> ForecastPublic:
    """Units per day for the next 7 days, when the balance runs out at that pace, and the
    top-up the forecast agent recommends. A customer the agent has not seen yet: seven
    zeros, nulls and ``days_learned`` 0."""
    return await mlreads.forecast(runtime, principal, customer_id)

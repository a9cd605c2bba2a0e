"""Resellers: created by the platform admin; a reseller reads and edits itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.control import tenants
from streambill.control.schemas import Page, ResellerCreate, ResellerUpdate, Status, TenantPublic

router = APIRouter(prefix="/v2/resellers", tags=["resellers"])
ResellerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("", response_model=TenantPublic, status_code=201)
async def create_reseller(
    body: ResellerCreate, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    """Create a reseller (admin only). Its account reaches ``billing.accounts.v1``."""
    return await tenants.create_reseller(runtime.control, principal, body)


@router.get("", response_model=Page[TenantPublic])
async def list_resellers(
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
    status: Status | None = None,
) -> Page[TenantPublic]:
    """Resellers in scope (the admin: all; a reseller: itself), ordered by id."""
    return await tenants.list_tenants(
        runtime.control, principal, "reseller", limit=limit, cursor=cursor, status=status
    )


@router.get("/{reseller_id}", response_model=TenantPublic)
async def get_reseller(
    reseller_id: ResellerId, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    return await tenants.get_tenant(runtime.control, principal, "reseller", reseller_id)


@router.patch("/{reseller_id}", response_model=TenantPublic)
async def update_reseller(
    reseller_id: ResellerId, body: ResellerUpdate, runtime: Runtime, principal: CurrentPrincipal
) -> TenantPublic:
    """Change name, time zone, branding, payout details (the reseller itself or the admin)
    or the status (the admin)."""
    return await tenants.update_tenant(runtime.control, principal, "reseller", reseller_id, body)

"""Resellers: created by the platform admin; a reseller reads and edits itself. Its
commission plan, statements (JSON, CSV, PDF) and payouts: the admin and the reseller itself
read them (anyone else: 404); only the admin sets a plan."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Path, Query, Response

from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.commissions import payout_reads, render, statements
from streambill.commissions.months import MONTH_PATTERN
from streambill.commissions.schemas import ResellerPayouts, StatementPage, StatementPublic
from streambill.control import plans, tenants
from streambill.control.schemas import Page, ResellerCreate, ResellerUpdate, Status, TenantPublic

router = APIRouter(prefix="/v2/resellers", tags=["resellers"])
ResellerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Month = Annotated[str, Path(pattern=MONTH_PATTERN, description="YYYY-MM")]
Limit = Annotated[int, Query(ge=1, le=1000)]
PLAN_EXAMPLE = {
    "tiers": [{"from": "0", "rate": "0.25"}, {"from": "1000", "rate": "0.30"}],
    "new_customer_bonus": "5",
    "high_usage_units": "500",
}


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


@router.get("/{reseller_id}/commission-plan", response_model=dict[str, Any])
async def get_commission_plan(
    reseller_id: ResellerId, runtime: Runtime, principal: CurrentPrincipal
) -> dict[str, Any]:
    """The reseller's commission plan (its own, or the defaults in its currency and time zone)
    as a document: decimal strings in major units (docs/commissions.md)."""
    return await plans.get_plan(runtime.control, principal, reseller_id)


@router.put("/{reseller_id}/commission-plan", response_model=dict[str, Any])
async def put_commission_plan(
    reseller_id: ResellerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    body: Annotated[dict[str, Any], Body(examples=[PLAN_EXAMPLE])],
) -> dict[str, Any]:
    """Replace the plan (admin only); missing fields take the defaults. 422 ``invalid_plan``
    for anything that is not a sane plan. Reaches the worker with the account
    (``billing.accounts.v1``, version + 1) and applies to entries from then on."""
    return await plans.put_plan(runtime.control, principal, reseller_id, body)


@router.get("/{reseller_id}/statements", response_model=StatementPage)
async def list_statements(
    reseller_id: ResellerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> StatementPage:
    """Closed months, oldest first."""
    return await statements.list_statements(
        runtime.control, principal, reseller_id, limit=limit, cursor=cursor
    )


def _download(content: bytes | str, media_type: str, filename: str) -> Response:
    return Response(
        content=content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{quote(filename)}"'},
    )


@router.get(
    "/{reseller_id}/statements/{month}.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The statement as CSV."}},
)
async def statement_csv(
    reseller_id: ResellerId, month: Month, runtime: Runtime, principal: CurrentPrincipal
) -> Response:
    """One row per customer, the month, each late adjustment, the total; major units."""
    statement = await statements.get_statement(runtime.control, principal, reseller_id, month)
    return _download(
        render.render_csv(statement),
        "text/csv; charset=utf-8",
        render.statement_filename(statement, "csv"),
    )


@router.get(
    "/{reseller_id}/statements/{month}.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The statement."}},
)
async def statement_pdf(
    reseller_id: ResellerId, month: Month, runtime: Runtime, principal: CurrentPrincipal
) -> Response:
    statement = await statements.get_statement(runtime.control, principal, reseller_id, month)
    return _download(
        render.render_pdf(statement),
        "application/pdf",
        render.statement_filename(statement, "pdf"),
    )


@router.get("/{reseller_id}/statements/{month}", response_model=StatementPublic)
async def get_statement(
    reseller_id: ResellerId, month: Month, runtime: Runtime, principal: CurrentPrincipal
) -> StatementPublic:
    """A closed month; 404 until it is closed."""
    statement = await statements.get_statement(runtime.control, principal, reseller_id, month)
    return (await statements.publics(runtime.control, [statement]))[0]


@router.get("/{reseller_id}/payouts", response_model=ResellerPayouts)
async def list_payouts(
    reseller_id: ResellerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> ResellerPayouts:
    """Its payouts by id, and what the next payout run would consider (``due_micros``)."""
    return await payout_reads.reseller_payouts(
        runtime.control, principal, reseller_id, limit=limit, cursor=cursor
    )

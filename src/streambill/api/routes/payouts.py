"""Month close and payouts (the platform admin; a reseller reads its own payouts):
``POST /v2/commissions/close``, payout runs and their pain.001 files, a payout's status.

This router is the one ``api/app.py`` includes for the whole of month close: it also carries
the exchange-rate routes and, as its lifespan, the auto-closer (a leased task that closes
every reseller month whose grace has passed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Response

from streambill.api.deps import AdminPrincipal, ApiRuntime, CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN
from streambill.api.routes import exchange_rates
from streambill.commissions import payout_reads, payouts, statements
from streambill.commissions.autoclose import AutoCloser
from streambill.commissions.close import MonthCloser
from streambill.commissions.schemas import (
    CloseRequest,
    CloseResponse,
    PayoutFailure,
    PayoutPublic,
    PayoutRunPublic,
    PendingClose,
)

ObjectPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]


def closer(runtime: ApiRuntime) -> MonthCloser:
    grace = timedelta(seconds=runtime.settings.commission_close_grace_s)
    return MonthCloser(runtime.control, runtime.clickhouse, grace)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan (FastAPI nests an included router's), so the runtime
    is there; stops before the app's runtime goes."""
    runtime: ApiRuntime | None = getattr(app.state, "runtime", None)
    if runtime is None or not runtime.settings.commissions:
        yield
        return
    auto = AutoCloser(closer(runtime))
    auto.start()
    try:
        yield
    finally:
        await auto.stop()


router = APIRouter(tags=["payouts"], lifespan=lifespan)
router.include_router(exchange_rates.router)


@router.post("/v2/commissions/close", response_model=CloseResponse)
async def close_month(
    body: CloseRequest, runtime: Runtime, principal: AdminPrincipal
) -> CloseResponse:
    """Close a month (admin only): one statement per reseller, or for ``reseller_id`` only.
    A closed month answers its stored statement unchanged. 409 ``month_not_closable`` before
    the month's end in the reseller's time zone plus ``COMMISSION_CLOSE_GRACE_S``."""
    result = await closer(runtime).close_month(principal, body.month, body.reseller_id)
    return CloseResponse(
        month=result.month,
        statements=await statements.publics(runtime.control, result.statements),
        pending=[
            PendingClose(reseller_id=p.reseller_id, closable_at=p.closable_at)
            for p in result.pending
        ],
    )


@router.post("/v2/payouts/runs", response_model=PayoutRunPublic, status_code=201)
async def run_payouts(runtime: Runtime, principal: AdminPrincipal) -> PayoutRunPublic:
    """Pay every reseller whose unpaid statements reach ``PAYOUT_MINIMUM``; SEPA payouts go
    into one pain.001 file (``file_url``). 409 ``sepa_not_configured`` when a SEPA payout is
    due and the debtor account is not set; 409 ``payout_run_in_progress``."""
    config = payouts.PayoutConfig.from_settings(runtime.settings)
    result = await payouts.PayoutRunner(runtime.control, config).run(principal)
    return payout_reads.run_public(result.run, result.payouts, result.file)


@router.get("/v2/payouts/runs/{run_id}", response_model=PayoutRunPublic)
async def get_run(
    run_id: ObjectPath, runtime: Runtime, principal: AdminPrincipal
) -> PayoutRunPublic:
    run, made, file = await payout_reads.get_run(runtime.control, principal, run_id)
    return payout_reads.run_public(run, made, file)


@router.get(
    "/v2/payouts/runs/{run_id}/pain.001.xml",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}, "description": "pain.001.001.03"}},
)
async def get_pain001(run_id: ObjectPath, runtime: Runtime, principal: AdminPrincipal) -> Response:
    """The run's SEPA credit-transfer file, as validated and stored."""
    file = await payout_reads.get_file(runtime.control, principal, run_id)
    return Response(
        content=file.content,
        media_type="application/xml",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.pain.001.xml"'},
    )


@router.get("/v2/payouts/{payout_id}", response_model=PayoutPublic)
async def get_payout(
    payout_id: ObjectPath, runtime: Runtime, principal: CurrentPrincipal
) -> PayoutPublic:
    """One payout (the admin, or the reseller it pays)."""
    return payout_reads.payout_public(
        await payout_reads.get_payout(runtime.control, principal, payout_id)
    )


@router.post("/v2/payouts/{payout_id}/paid", response_model=PayoutPublic)
async def mark_paid(
    payout_id: ObjectPath, runtime: Runtime, principal: AdminPrincipal
) -> PayoutPublic:
    """``pending`` -> ``paid`` (409 ``conflict`` from any other status)."""
    return payout_reads.payout_public(
        await payouts.mark_paid(runtime.control, principal, payout_id)
    )


@router.post("/v2/payouts/{payout_id}/failed", response_model=PayoutPublic)
async def mark_failed(
    payout_id: ObjectPath, body: PayoutFailure, runtime: Runtime, principal: AdminPrincipal
) -> PayoutPublic:
    """``pending`` -> ``failed`` with the reason; its statements are unpaid again and the
    next payout run pays them."""
    return payout_reads.payout_public(
        await payouts.mark_failed(runtime.control, principal, payout_id, body.reason)
    )

"""Operator endpoints: ledger integrity, commission accuracy, the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from streambill.analytics import commissions, queries
from streambill.api.deps import AdminPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN
from streambill.commissions.months import MONTH_PATTERN
from streambill.commissions.queries import month_figures
from streambill.control.models import AuditRecord, Tenant
from streambill.control.plans import effective_plan
from streambill.control.rates import load_rate_table
from streambill.domain.commissions import Plan

router = APIRouter(prefix="/v2/admin", tags=["operations"])


class ViolationPublic(BaseModel):
    kind: str
    customer_id: str
    seq: int | None
    detail: str


class InvariantReport(BaseModel):
    violations: list[ViolationPublic]


class AuditPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditPublic]
    next_cursor: int | None


@router.get("/ledger/invariants", response_model=InvariantReport)
async def ledger_invariants(
    runtime: Runtime, _: AdminPrincipal, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> InvariantReport:
    """ARCHITECTURE's ledger invariants over what ClickHouse holds: per customer ``seq``
    runs 1..n, each balance is the previous plus the amount, no source event twice."""
    found = await runtime.clickhouse.run(queries.ledger_invariants, limit)
    return InvariantReport(
        violations=[
            ViolationPublic(kind=v.kind, customer_id=v.customer_id, seq=v.seq, detail=v.detail)
            for v in found
        ]
    )


class CommissionFigures(BaseModel):
    base_micros: int
    commission_micros: int
    bonus_micros: int
    total_micros: int


class CommissionCheckLine(BaseModel):
    reseller_id: str
    currency: str
    stream: CommissionFigures
    batch: CommissionFigures
    equal: bool


class CommissionCheck(BaseModel):
    month: str
    equal: bool
    resellers: list[CommissionCheckLine]


MONTH_QUERY = Query(pattern=MONTH_PATTERN, description="YYYY-MM")


@router.get("/commissions/check", response_model=CommissionCheck)
async def commission_check(
    runtime: Runtime,
    _: AdminPrincipal,
    month: Annotated[str | None, MONTH_QUERY] = None,
    reseller_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
) -> CommissionCheck:
    """The month's commissions as the agent streamed them (the entries in ClickHouse) next to
    an independent batch computation from the ledger in ClickHouse, per reseller, to the
    micro (default: the current month in UTC). While a month still takes traffic the two
    sides differ by what is in flight (the ledger reaches ClickHouse a slice and a sink flush,
    a second or two, before its commissions do): check a quiet or past month, or again.
    Fails with ``no_exchange_rate`` when a customer's amounts cannot be converted."""
    if month is None:
        month = runtime.control.clock().astimezone(UTC).strftime("%Y-%m")
    async with runtime.control.sessions() as session:
        query = select(Tenant).where(Tenant.kind == "reseller")
        if reseller_id is not None:
            query = query.where(Tenant.id == reseller_id)
        resellers = (await session.scalars(query.order_by(Tenant.id))).all()
        rates = await load_rate_table(session)
    plans: dict[str, Plan] = {r.id: effective_plan(r) for r in resellers}
    batch = await runtime.clickhouse.run(commissions.batch_commissions, plans, rates, {month})
    lines = []
    for reseller in resellers:
        figures = await runtime.clickhouse.run(month_figures, reseller.id, month)
        expected = batch.get((reseller.id, month))
        stream = CommissionFigures(
            base_micros=figures.base_micros,
            commission_micros=figures.commission_micros,
            bonus_micros=figures.bonus_micros,
            total_micros=figures.total_micros,
        )
        recomputed = CommissionFigures(
            base_micros=expected.base_micros if expected else 0,
            commission_micros=expected.commission_micros if expected else 0,
            bonus_micros=expected.bonus_micros if expected else 0,
            total_micros=expected.total_micros if expected else 0,
        )
        if figures.entry_count == 0 and expected is None:
            continue
        lines.append(
            CommissionCheckLine(
                reseller_id=reseller.id,
                currency=reseller.currency,
                stream=stream,
                batch=recomputed,
                equal=stream == recomputed,
            )
        )
    return CommissionCheck(month=month, equal=all(x.equal for x in lines), resellers=lines)


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    runtime: Runtime,
    _: AdminPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
    target: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
) -> AuditPage:
    """Control-plane changes, newest first: who did what to which object."""
    query = select(AuditRecord)
    if before is not None:
        query = query.where(AuditRecord.id < before)
    if target is not None:
        query = query.where(AuditRecord.target == target)
    async with runtime.control.sessions() as session:
        rows = (await session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit))).all()
    items = [AuditPublic.model_validate(r, from_attributes=True) for r in rows]
    return AuditPage(items=items, next_cursor=items[-1].id if len(items) == limit else None)

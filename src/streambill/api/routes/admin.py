"""Operator endpoints: ledger integrity, the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from streambill.analytics import queries
from streambill.api.deps import AdminPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN
from streambill.control.models import AuditRecord

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

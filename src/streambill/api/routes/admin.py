"""Operator endpoints: ledger integrity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from streambill.analytics import queries
from streambill.api.deps import AdminKey, Runtime

router = APIRouter(prefix="/v2/admin", tags=["operations"])


class ViolationPublic(BaseModel):
    kind: str
    customer_id: str
    seq: int | None
    detail: str


class InvariantReport(BaseModel):
    violations: list[ViolationPublic]


@router.get("/ledger/invariants", response_model=InvariantReport)
async def ledger_invariants(
    runtime: Runtime, _: AdminKey, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
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

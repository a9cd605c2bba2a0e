"""A customer's balance and ledger (CONTRACT section 5)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from streambill.analytics import queries
from streambill.analytics.rows import LedgerRow
from streambill.api.deps import AdminKey, Runtime
from streambill.api.schemas import BalancePublic, LedgerEntryPublic, LedgerPage
from streambill.domain.money import format_micros
from streambill.errors import NotFound

router = APIRouter(prefix="/v2/customers", tags=["customers"])
CustomerId = Annotated[str, Path(min_length=1, max_length=128)]


@router.get("/{customer_id}/balance", response_model=BalancePublic)
async def get_balance(customer_id: CustomerId, runtime: Runtime, _: AdminKey) -> BalancePublic:
    """The balance after the customer's latest ledger entry (live, not one flush behind)."""
    balance = runtime.sink.view.balance(customer_id)
    if balance is None:
        balance = await runtime.clickhouse.run(queries.customer_balance, customer_id)
    if balance is None:
        raise NotFound(f"customer {customer_id!r} has no ledger entries")
    return BalancePublic(
        customer_id=customer_id,
        currency=balance.currency,
        balance=format_micros(balance.balance_micros),
        balance_micros=balance.balance_micros,
        seq=balance.seq,
        updated_at=balance.applied_at,
    )


@router.get("/{customer_id}/ledger", response_model=LedgerPage)
async def get_ledger(
    customer_id: CustomerId,
    runtime: Runtime,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> LedgerPage:
    """Entries newest first; page with ``before_seq``. Includes entries not yet flushed."""
    stored = await runtime.clickhouse.run(queries.customer_ledger, customer_id, limit, before_seq)
    rows = queries.merge_pending(stored, runtime.sink.view.pending(customer_id), limit, before_seq)
    if not rows and runtime.sink.view.balance(customer_id) is None and before_seq is None:
        raise NotFound(f"customer {customer_id!r} has no ledger entries")
    entries = [_public(r) for r in rows]
    next_before = entries[-1].seq if len(entries) == limit and entries[-1].seq > 1 else None
    return LedgerPage(entries=entries, next_before_seq=next_before)


def _public(row: LedgerRow) -> LedgerEntryPublic:
    return LedgerEntryPublic(
        entry_id=row.entry_id,
        source_event_id=row.source_event_id,
        source_topic=row.source_topic,
        customer_id=row.customer_id,
        reseller_id=row.reseller_id,
        kind=row.kind,
        meter=row.meter,
        quantity=row.quantity_text,
        amount_micros=row.amount_micros,
        balance_micros=row.balance_micros,
        currency=row.currency,
        seq=row.seq,
        occurred_at=row.occurred_at,
        applied_at=row.applied_at,
    )

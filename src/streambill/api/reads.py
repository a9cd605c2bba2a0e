"""Balance and ledger reads shared by REST and GraphQL (same scope rule, same answers)."""

from __future__ import annotations

from streambill.analytics import queries
from streambill.analytics.rows import LedgerRow
from streambill.api.deps import ApiRuntime
from streambill.api.schemas import BalancePublic, LedgerEntryPublic, LedgerPage
from streambill.control import tenants
from streambill.control.principal import Principal
from streambill.domain.money import format_micros


async def balance(runtime: ApiRuntime, principal: Principal, customer_id: str) -> BalancePublic:
    """The live balance; a customer the control plane knows but nothing was applied to yet
    has balance 0 at seq 0; anything outside the principal's scope is 404."""
    await runtime.control.require_customer(principal, customer_id)
    found = runtime.sink.view.balance(customer_id)
    if found is None:
        found = await runtime.clickhouse.run(queries.customer_balance, customer_id)
    if found is None:
        account = await tenants.get_tenant(runtime.control, principal, "customer", customer_id)
        return BalancePublic(
            customer_id=customer_id,
            currency=account.currency,
            balance=format_micros(0),
            balance_micros=0,
            seq=0,
            updated_at=account.created_at,
        )
    return BalancePublic(
        customer_id=customer_id,
        currency=found.currency,
        balance=format_micros(found.balance_micros),
        balance_micros=found.balance_micros,
        seq=found.seq,
        updated_at=found.applied_at,
    )


async def ledger(
    runtime: ApiRuntime,
    principal: Principal,
    customer_id: str,
    limit: int,
    before_seq: int | None,
) -> LedgerPage:
    """Entries newest first, including consumed ones not yet flushed to ClickHouse."""
    await runtime.control.require_customer(principal, customer_id)
    stored = await runtime.clickhouse.run(queries.customer_ledger, customer_id, limit, before_seq)
    rows = queries.merge_pending(stored, runtime.sink.view.pending(customer_id), limit, before_seq)
    if not rows and runtime.sink.view.balance(customer_id) is None and before_seq is None:
        # 404 unless the control plane knows the customer (then: no entries yet).
        await tenants.get_tenant(runtime.control, principal, "customer", customer_id)
    entries = [entry_public(r) for r in rows]
    next_before = entries[-1].seq if len(entries) == limit and entries[-1].seq > 1 else None
    return LedgerPage(entries=entries, next_before_seq=next_before)


def entry_public(row: LedgerRow) -> LedgerEntryPublic:
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

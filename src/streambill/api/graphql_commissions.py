"""GraphQL for resellers' money: commission months and entries, statements, payouts.

The same functions as the REST routes, with the request's principal: the admin or the
reseller itself; anyone else gets ``NOT_FOUND``, as REST answers 404.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from streambill.api.graphql_base import MAX_PAGE, Context, Micros, call, ctx
from streambill.api.routes import commissions as commission_reads
from streambill.commissions import payout_reads, statements
from streambill.commissions.schemas import PayoutPublic, StatementPublic


@strawberry.type
class CustomerPart:
    customer_id: str
    base_micros: Micros


@strawberry.type
class CommissionEntry:
    entry_id: str
    reseller_id: str
    customer_id: str
    month: str
    kind: str
    amount_micros: Micros
    currency: str
    base_micros: Micros
    base_delta_micros: Micros
    tier: int
    rate: str
    position: int
    month_commission_micros: Micros
    month_bonus_micros: Micros
    customers: list[CustomerPart]
    facts: int
    source_entry_id: str
    source_kind: str
    source_amount_micros: Micros
    source_currency: str
    fx_rate: str | None
    fx_date: date | None
    occurred_at: datetime
    created_at: datetime


@strawberry.type
class CommissionEntryPage:
    entries: list[CommissionEntry]
    next_after_position: int | None


@strawberry.type
class CommissionMonth:
    reseller_id: str
    month: str
    currency: str
    base_micros: Micros
    rate: str
    commission_micros: Micros
    bonus_micros: Micros
    total_micros: Micros
    tier: int
    entry_count: int
    entries_url: str

    @strawberry.field(description="The month's entries in position order, after afterPosition.")
    async def entries(
        self, info: Info[Context, Any], limit: int = 100, after_position: int = 0
    ) -> CommissionEntryPage:
        here = ctx(info)
        if not 1 <= limit <= MAX_PAGE or after_position < 0:
            raise GraphQLError(
                f"limit must be 1..{MAX_PAGE}, afterPosition >= 0",
                extensions={"code": "INVALID_REQUEST"},
            )
        page = await call(
            lambda: commission_reads.entries_page(
                here.runtime, here.principal, self.reseller_id, self.month, limit, after_position
            )
        )
        entries = [
            CommissionEntry(
                **e.model_dump(exclude={"customers"}),
                customers=[
                    CustomerPart(customer_id=c, base_micros=Micros(b))
                    for c, b in e.customers.items()
                ],
            )
            for e in page.entries
        ]
        last = entries[-1].position if page.next is not None else None
        return CommissionEntryPage(entries=entries, next_after_position=last)


@strawberry.type
class StatementLine:
    customer_id: str
    name: str
    base_micros: Micros
    commission_micros: Micros
    bonus_micros: Micros
    total_micros: Micros


@strawberry.type
class LateAdjustment:
    month: str
    amount_micros: Micros


@strawberry.type
class Statement:
    id: str
    reseller_id: str
    month: str
    currency: str
    timezone: str
    base_micros: Micros
    tier: int
    rate: str
    commission_micros: Micros
    bonus_micros: Micros
    month_total_micros: Micros
    late_micros: Micros
    total_micros: Micros
    entry_count: int
    lines: list[StatementLine]
    late_adjustments: list[LateAdjustment]
    closed_at: datetime
    payout_id: str | None
    payout_status: str
    csv_url: str
    pdf_url: str

    @staticmethod
    def of(s: StatementPublic) -> Statement:
        doc = s.model_dump(exclude={"lines", "late_adjustments"})
        path = f"/v2/resellers/{s.reseller_id}/statements/{s.month}"
        return Statement(
            **doc,
            lines=[StatementLine(**line.model_dump()) for line in s.lines],
            late_adjustments=[LateAdjustment(**a.model_dump()) for a in s.late_adjustments],
            csv_url=f"{path}.csv",
            pdf_url=f"{path}.pdf",
        )


@strawberry.type
class StatementPage:
    items: list[Statement]
    next_cursor: str | None


@strawberry.type
class Payout:
    id: str
    run_id: str
    reseller_id: str
    amount_micros: Micros
    currency: str
    statements_micros: Micros
    carried_in_micros: Micros
    remainder_micros: Micros
    statement_ids: list[str]
    method: str
    status: str
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    failed_at: datetime | None

    @staticmethod
    def of(p: PayoutPublic) -> Payout:
        return Payout(**p.model_dump())


@strawberry.type
class PayoutPage:
    items: list[Payout]
    next_cursor: str | None
    currency: str
    due_micros: Micros


def _page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise GraphQLError(f"first must be 1..{MAX_PAGE}", extensions={"code": "INVALID_REQUEST"})
    return first


@strawberry.type
class CommissionQueries:
    @strawberry.field(description="A reseller's commission month (the admin or the reseller).")
    async def commissions(
        self, info: Info[Context, Any], reseller_id: str, month: str | None = None
    ) -> CommissionMonth:
        here = ctx(info)
        found = await call(
            lambda: commission_reads.month_summary(here.runtime, here.principal, reseller_id, month)
        )
        return CommissionMonth(**found.model_dump())

    @strawberry.field(description="A reseller's closed statements, oldest month first.")
    async def statements(
        self,
        info: Info[Context, Any],
        reseller_id: str,
        first: int = 100,
        after: str | None = None,
    ) -> StatementPage:
        here = ctx(info)
        limit = _page_size(first)
        page = await call(
            lambda: statements.list_statements(
                here.runtime.control, here.principal, reseller_id, limit=limit, cursor=after
            )
        )
        return StatementPage(
            items=[Statement.of(s) for s in page.items], next_cursor=page.next_cursor
        )

    @strawberry.field(description="The statement of a closed month; NOT_FOUND until closed.")
    async def statement(self, info: Info[Context, Any], reseller_id: str, month: str) -> Statement:
        here = ctx(info)
        cp = here.runtime.control
        found = await call(lambda: statements.get_statement(cp, here.principal, reseller_id, month))
        (public,) = await statements.publics(cp, [found])
        return Statement.of(public)

    @strawberry.field(description="A reseller's payouts and what the next run would pay it.")
    async def payouts(
        self,
        info: Info[Context, Any],
        reseller_id: str,
        first: int = 100,
        after: str | None = None,
    ) -> PayoutPage:
        here = ctx(info)
        limit = _page_size(first)
        page = await call(
            lambda: payout_reads.reseller_payouts(
                here.runtime.control, here.principal, reseller_id, limit=limit, cursor=after
            )
        )
        return PayoutPage(
            items=[Payout.of(p) for p in page.items],
            next_cursor=page.next_cursor,
            currency=page.currency,
            due_micros=Micros(page.due_micros),
        )

"""A reseller's commissions: a month's figures and its entries, read from ClickHouse.

Only the platform admin and the reseller itself (its reseller keys and users) see them; a
customer, a service key (also one bound to the reseller) or another reseller gets 404, as for
an object that does not exist. The figures are as fresh as the ClickHouse sink's last flush
of ``billing.commissions.v1`` (about a second). GraphQL calls the same two functions.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Final
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from streambill.analytics import commissions
from streambill.analytics.rows import CommissionRow
from streambill.api.deps import ApiRuntime, CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN
from streambill.commissions import queries
from streambill.commissions.months import MONTH_PATTERN, check_month
from streambill.control.models import Tenant
from streambill.control.plans import effective_plan, visible_reseller
from streambill.control.principal import Principal
from streambill.domain.commissions import Plan

router = APIRouter(prefix="/v2/resellers", tags=["commissions"])
ENTRIES_LIMIT_DEFAULT: Final = 100
LATEST_LIMIT_DEFAULT: Final = 10
LATEST_LIMIT_MAX: Final = 100
ResellerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Month = Annotated[
    str | None,
    Query(
        pattern=MONTH_PATTERN,
        description="YYYY-MM in the reseller's time zone; default: the current month there.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=commissions.ENTRIES_LIMIT_MAX)]
POSITION_MAX: Final = 2**62  # positions are Int64 in ClickHouse
AfterPosition = Annotated[
    int, Query(ge=0, le=POSITION_MAX, description="The position of the last entry seen.")
]


class CommissionMonthPublic(BaseModel):
    reseller_id: str
    month: str
    currency: str
    base_micros: int = Field(description="Net usage of the month's customers, in micros.")
    rate: str = Field(description="The rate of the month's tier, a decimal fraction: '0.275'.")
    commission_micros: int
    bonus_micros: int
    total_micros: int
    tier: int = Field(description="Index of the plan's tier the month's base is in (0: first).")
    entry_count: int
    entries_url: str


class CommissionEntryPublic(BaseModel):
    """One entry as ``billing.commissions.v1`` carries it (docs/commissions.md)."""

    entry_id: str
    reseller_id: str
    customer_id: str
    month: str
    kind: str
    amount_micros: int
    currency: str
    base_micros: int
    base_delta_micros: int
    tier: int
    rate: str
    position: int
    month_commission_micros: int
    month_bonus_micros: int
    customers: dict[str, int] = Field(
        description="An accrual slice: each customer's part of base_delta_micros."
    )
    facts: int = Field(description="How many ledger entries the entry sums.")
    source_entry_id: str
    source_kind: str
    source_amount_micros: int
    source_currency: str
    fx_rate: str | None
    fx_date: date | None
    occurred_at: datetime
    created_at: datetime


class CommissionEntryPage(BaseModel):
    entries: list[CommissionEntryPublic]
    next: str | None = Field(default=None, description="The next page; null on the last one.")


async def _reseller_month(
    runtime: ApiRuntime, principal: Principal, reseller_id: str, month: str | None
) -> tuple[Tenant, Plan, str]:
    tenant = await visible_reseller(runtime.control, principal, reseller_id)
    plan = effective_plan(tenant)
    chosen = check_month(month) if month is not None else plan.month_of(runtime.control.clock())
    return tenant, plan, chosen


def entries_path(
    reseller_id: str, month: str, limit: int | None = None, after_position: int | None = None
) -> str:
    """
    >>> entries_path("res 1", "2026-11", 50, 17)
    '/v2/resellers/res%201/commissions/entries?month=2026-11&limit=50&after_position=17'
    """
    query: dict[str, str | int] = {"month": month}
    if limit is not None:
        query["limit"] = limit
    if after_position is not None:
        query["after_position"] = after_position
    path = f"{router.prefix}/{quote(reseller_id, safe='')}/commissions/entries"
    return f"{path}?{urlencode(query)}"


async def month_summary(
    runtime: ApiRuntime, principal: Principal, reseller_id: str, month: str | None
) -> CommissionMonthPublic:
    """The month's figures; a month without entries is all zeros at the plan's first tier."""
    tenant, plan, chosen = await _reseller_month(runtime, principal, reseller_id, month)
    figures = await runtime.clickhouse.run(queries.month_figures, reseller_id, chosen)
    tier, rate = figures.tier_and_rate(plan)
    return CommissionMonthPublic(
        reseller_id=reseller_id,
        month=chosen,
        currency=figures.currency if figures.entry_count else tenant.currency,
        base_micros=figures.base_micros,
        rate=rate,
        commission_micros=figures.commission_micros,
        bonus_micros=figures.bonus_micros,
        total_micros=figures.total_micros,
        tier=tier,
        entry_count=figures.entry_count,
        entries_url=entries_path(reseller_id, chosen),
    )


async def entries_page(
    runtime: ApiRuntime,
    principal: Principal,
    reseller_id: str,
    month: str | None,
    limit: int,
    after_position: int,
) -> CommissionEntryPage:
    """The month's entries in position order after ``after_position``."""
    _, _, chosen = await _reseller_month(runtime, principal, reseller_id, month)
    rows = await runtime.clickhouse.run(
        commissions.month_entries, reseller_id, chosen, limit + 1, after_position
    )
    entries = [entry_public(r) for r in rows[:limit]]
    more = len(rows) > limit
    next_url = entries_path(reseller_id, chosen, limit, entries[-1].position) if more else None
    return CommissionEntryPage(entries=entries, next=next_url)


def entry_public(row: CommissionRow) -> CommissionEntryPublic:
    return CommissionEntryPublic(**row._asdict())


@router.get("/{reseller_id}/commissions", response_model=CommissionMonthPublic)
async def get_commissions(
    reseller_id: ResellerId, runtime: Runtime, principal: CurrentPrincipal, month: Month = None
) -> CommissionMonthPublic:
    """A month's base, rate, commission and bonuses (the admin, or the reseller itself)."""
    return await month_summary(runtime, principal, reseller_id, month)


@router.get("/{reseller_id}/commissions/entries", response_model=CommissionEntryPage)
async def get_commission_entries(
    reseller_id: ResellerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    month: Month = None,
    limit: Limit = ENTRIES_LIMIT_DEFAULT,
    after_position: AfterPosition = 0,
) -> CommissionEntryPage:
    """The month's commission entries, oldest first; follow ``next`` for the next page."""
    return await entries_page(runtime, principal, reseller_id, month, limit, after_position)


LatestLimit = Annotated[int, Query(ge=1, le=LATEST_LIMIT_MAX)]


@router.get("/{reseller_id}/commissions/latest", response_model=CommissionEntryPage)
async def get_latest_commission_entries(
    reseller_id: ResellerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    month: Month = None,
    limit: LatestLimit = LATEST_LIMIT_DEFAULT,
) -> CommissionEntryPage:
    """The month's newest commission entries, newest first (a dashboard's ticker list);
    ``next`` is always null: page the whole month with ``/commissions/entries``."""
    _, _, chosen = await _reseller_month(runtime, principal, reseller_id, month)
    rows = await runtime.clickhouse.run(commissions.latest_entries, reseller_id, chosen, limit)
    return CommissionEntryPage(entries=[entry_public(r) for r in rows], next=None)

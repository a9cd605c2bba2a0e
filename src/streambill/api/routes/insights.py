"""The dashboards' reads: a customer's usage and statements, a reseller's and the platform's
key figures. Figures come from ClickHouse (as fresh as the sink's last flush, about a
second), names and statuses from the control plane.

- ``GET /v2/customers/{id}/usage``, ``/statements``, ``/statements/{month}``: whoever sees
  the customer (the customer, its reseller, a service key bound to it, the admin).
- ``GET /v2/resellers/{id}/kpis``: the reseller itself and the admin (not a service key).
- ``GET /v2/admin/kpis``: the admin.

Anyone else gets 404, as for an id that does not exist (403 for admin-only routes).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Final

from fastapi import APIRouter, Path
from sqlalchemy import func, select

from streambill.analytics import deadletters as letters
from streambill.analytics import insights, queries
from streambill.api.deps import AdminPrincipal, CurrentPrincipal, Runtime
from streambill.api.insight_schemas import (
    AdminKpisPublic,
    Granularity,
    PlatformRevenuePublic,
    ResellerKpisPublic,
    RevenuePublic,
    StatementLinePublic,
    StatementListPublic,
    StatementPublic,
    StatementSummaryPublic,
    TopCustomerPublic,
    UsageBucketPublic,
    UsagePublic,
)
from streambill.api.params import ANY_ID_PATTERN
from streambill.commissions.months import MONTH_PATTERN, check_month, month_of, month_start
from streambill.control import deadletters as replays
from streambill.control import tenants
from streambill.control.models import Tenant
from streambill.control.plans import visible_reseller
from streambill.domain.commissions import add_months
from streambill.errors import InvalidEvent, NotFound, check

router = APIRouter(prefix="/v2", tags=["insights"])
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
ResellerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Month = Annotated[str, Path(pattern=MONTH_PATTERN, description="YYYY-MM")]

BUCKET_WIDTH: Final = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_BUCKETS: Final = {"hour": 48, "day": 31}
BUCKETS_MAX: Final = 1000
# Usage ranges must lie in what ClickHouse's DateTime holds (1970..2106), with room.
TIME_MIN: Final = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX: Final = datetime(2100, 1, 1, tzinfo=UTC)
ACTIVE_DAYS: Final = 30
TOP_PER_CURRENCY: Final = 5
RATE_STEP: Final = Decimal("0.0001")


def _floor(at: datetime, granularity: Granularity) -> datetime:
    at = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if granularity == "day" else at


def usage_window(
    granularity: Granularity, since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """``[since, until)`` aligned outwards to whole buckets; defaults: the last 48 hours or
    31 days, the current bucket included. A naive time is taken as UTC.

    >>> now = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    >>> [t.isoformat() for t in usage_window("hour", None, None, now)]
    ['2026-11-23T11:00:00+00:00', '2026-11-25T11:00:00+00:00']
    >>> usage_window("hour", now - timedelta(days=42), None, now)
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: 1009 hour buckets from 2026-10-14T10:00:00+00:00; at most 1000
    """
    width = BUCKET_WIDTH[granularity]
    since, until = (_utc(t) if t is not None else None for t in (since, until))
    for given in (since, until):
        if given is not None and not TIME_MIN <= given < TIME_MAX:
            raise InvalidEvent("since and until must be within 1970..2099", code="invalid_request")
    if until is None:
        end = _floor(now, granularity) + width
    else:
        end = _floor(until, granularity)
        end = end + width if end < until else end
    start = end - DEFAULT_BUCKETS[granularity] * width if since is None else since
    start = _floor(start, granularity)
    if start >= end:
        raise InvalidEvent("since must be before until", code="invalid_request")
    buckets = (end - start) // width
    if buckets > BUCKETS_MAX:
        raise InvalidEvent(
            f"{buckets} {granularity} buckets from {start.isoformat()}; at most {BUCKETS_MAX}",
            code="range_too_large",
        )
    return start, end


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def format_quantity(value: Decimal) -> str:
    """A summed quantity as a plain decimal string, without trailing zeros.

    >>> format_quantity(Decimal("12.500000000")), format_quantity(Decimal("100.000000000"))
    ('12.5', '100')
    """
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


@router.get("/customers/{customer_id}/usage", response_model=UsagePublic)
async def customer_usage(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    granularity: Granularity = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
) -> UsagePublic:
    """Usage quantity, spend and entry count per bucket (hour, or UTC day, of
    ``occurred_at``) and meter, ascending. ``[since, until)`` is widened to whole buckets;
    defaults: the last 48 hours, or 31 days. More than 1,000 buckets: 422
    ``range_too_large``."""
    customer = await tenants.get_tenant(runtime.control, principal, "customer", customer_id)
    start, end = usage_window(granularity, since, until, runtime.control.clock())
    rows = await runtime.clickhouse.run(queries.usage_rollup, customer_id, granularity, start, end)
    buckets = [
        UsageBucketPublic(
            bucket=bucket,
            meter=meter,
            quantity=format_quantity(quantity),
            spend_micros=spend,
            entries=entries,
        )
        for bucket, meter, _currency, entries, quantity, spend in rows
    ]
    return UsagePublic(
        customer_id=customer_id,
        currency=customer.currency,
        granularity=granularity,
        since=start,
        until=end,
        buckets=buckets,
    )


def _summary(month: insights.StatementMonth) -> dict[str, int | str]:
    return {
        "month": month.month,
        "opening_balance_micros": month.opening_balance_micros,
        "topups_micros": month.topups_micros,
        "usage_micros": month.usage_micros,
        "refunds_micros": month.refunds_micros,
        "adjustments_micros": month.adjustments_micros,
        "closing_balance_micros": month.closing_balance_micros,
        "entries": month.entries,
    }


@router.get("/customers/{customer_id}/statements", response_model=StatementListPublic)
async def customer_statements(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal
) -> StatementListPublic:
    """One summary per month with entries, newest first; months in the customer's time
    zone, by when each entry was posted. Opening + movements == closing, checked."""
    customer = await tenants.get_tenant(runtime.control, principal, "customer", customer_id)
    months = await runtime.clickhouse.run(insights.statement_months, customer_id, customer.timezone)
    return StatementListPublic(
        customer_id=customer_id,
        currency=customer.currency,
        timezone=customer.timezone,
        statements=[StatementSummaryPublic.model_validate(_summary(m)) for m in months],
    )


@router.get("/customers/{customer_id}/statements/{month}", response_model=StatementPublic)
async def customer_statement(
    customer_id: CustomerId, month: Month, runtime: Runtime, principal: CurrentPrincipal
) -> StatementPublic:
    """A month's summary and its lines by kind and meter (an invoice-like document); 404
    for a month without entries."""
    month = check_month(month)
    customer = await tenants.get_tenant(runtime.control, principal, "customer", customer_id)
    months = await runtime.clickhouse.run(insights.statement_months, customer_id, customer.timezone)
    found = next((m for m in months if m.month == month), None)
    if found is None:
        raise NotFound(f"no statement of customer {customer_id!r} for {month}")
    lines = await runtime.clickhouse.run(
        insights.statement_lines, customer_id, customer.timezone, month
    )
    check(
        sum(line.amount_micros for line in lines) == found.movements_micros
        and sum(line.entries for line in lines) == found.entries,
        f"statement {customer_id} {month}: lines do not add up to the summary",
    )
    return StatementPublic.model_validate(
        {
            **_summary(found),
            "customer_id": customer_id,
            "currency": customer.currency,
            "timezone": customer.timezone,
            "lines": [
                StatementLinePublic(
                    kind=line.kind,
                    meter=line.meter,
                    quantity=None if line.quantity is None else format_quantity(line.quantity),
                    amount_micros=line.amount_micros,
                    entries=line.entries,
                )
                for line in lines
            ],
        }
    )


def _activity_windows(now: datetime) -> tuple[datetime, datetime]:
    """(start of the 30 UTC days before the last 30, start of the last 30): today counts."""
    recent = _floor(now, "day") - timedelta(days=ACTIVE_DAYS - 1)
    return recent - timedelta(days=ACTIVE_DAYS), recent


def churn_rate(churned: int, previously_active: int) -> str:
    """churned / previously active, 4 places (half-even); "0.0000" without any.

    >>> churn_rate(1, 3), churn_rate(0, 0), churn_rate(2, 2)
    ('0.3333', '0.0000', '1.0000')
    """
    if previously_active == 0:
        return "0.0000"
    rate = (Decimal(churned) / Decimal(previously_active)).quantize(RATE_STEP, ROUND_HALF_EVEN)
    return str(rate)


def top_customers(spend: list[insights.Spend], names: dict[str, str]) -> list[TopCustomerPublic]:
    """The top 5 by month-to-date spend of each currency, then all of them by spend."""
    by_currency: dict[str, list[insights.Spend]] = defaultdict(list)
    for row in spend:
        if row.month_to_date_micros > 0:
            by_currency[row.currency].append(row)
    picked = [
        row
        for rows in by_currency.values()
        for row in sorted(rows, key=lambda r: (-r.month_to_date_micros, r.customer_id))[
            :TOP_PER_CURRENCY
        ]
    ]
    picked.sort(key=lambda r: (-r.month_to_date_micros, r.currency, r.customer_id))
    return [
        TopCustomerPublic(
            customer_id=row.customer_id,
            name=names.get(row.customer_id, row.customer_id),
            currency=row.currency,
            spend_micros=row.month_to_date_micros,
        )
        for row in picked
    ]


@router.get("/resellers/{reseller_id}/kpis", response_model=ResellerKpisPublic)
async def reseller_kpis(
    reseller_id: ResellerId, runtime: Runtime, principal: CurrentPrincipal
) -> ResellerKpisPublic:
    """Customers (total, active, suspended, churned), usage revenue per currency this
    month and last (months in the reseller's time zone), and the top customers."""
    reseller = await visible_reseller(runtime.control, principal, reseller_id)
    now = runtime.control.clock()
    month = month_of(now, reseller.timezone)
    async with runtime.control.sessions() as session:
        customers = (
            await session.execute(
                select(Tenant.id, Tenant.name, Tenant.status).where(
                    Tenant.kind == "customer", Tenant.parent_id == reseller_id
                )
            )
        ).all()
    previous_since, recent_since = _activity_windows(now)
    active = await runtime.clickhouse.run(
        insights.activity, reseller_id, previous_since, recent_since
    )
    spend = await runtime.clickhouse.run(
        insights.reseller_spend,
        reseller_id,
        _floor(month_start(add_months(month, -1), reseller.timezone), "hour"),
        _floor(month_start(month, reseller.timezone), "hour"),
        _floor(now, "hour") + timedelta(hours=1),
    )
    revenue: dict[str, list[int]] = {reseller.currency: [0, 0]}
    for row in spend:
        totals = revenue.setdefault(row.currency, [0, 0])
        totals[0] += row.month_to_date_micros
        totals[1] += row.previous_month_micros
    return ResellerKpisPublic(
        reseller_id=reseller_id,
        month=month,
        timezone=reseller.timezone,
        customers_total=len(customers),
        customers_active=len(active.recent),
        customers_suspended=sum(1 for c in customers if c.status == "suspended"),
        churned_customers=len(active.churned),
        churn_rate=churn_rate(len(active.churned), len(active.previous)),
        revenue=[
            RevenuePublic(currency=c, month_to_date_micros=t[0], previous_month_micros=t[1])
            for c, t in sorted(revenue.items())
        ],
        top_customers=top_customers(spend, {c.id: c.name for c in customers}),
    )


@router.get("/admin/kpis", response_model=AdminKpisPublic)
async def admin_kpis(runtime: Runtime, _: AdminPrincipal) -> AdminKpisPublic:
    """The platform at a glance: tenants, activity (30 days), usage today and revenue this
    month (UTC), open dead letters, fraud alerts of the last 24 hours, ledger entries."""
    now = runtime.control.clock()
    async with runtime.control.sessions() as session:
        result = await session.execute(select(Tenant.kind, func.count()).group_by(Tenant.kind))
        counts: dict[str, int] = {kind: int(count) for kind, count in result.tuples()}
    previous_since, recent_since = _activity_windows(now)
    active = await runtime.clickhouse.run(insights.activity, None, previous_since, recent_since)
    today = _floor(now, "day")
    figures = await runtime.clickhouse.run(
        insights.platform_figures, today, today.replace(day=1), now - timedelta(hours=24)
    )
    stored_letters = await runtime.clickhouse.run(letters.letter_count)
    replayed = await replays.replayed_count(runtime.control)
    return AdminKpisPublic(
        resellers=counts.get("reseller", 0),
        customers=counts.get("customer", 0),
        customers_active=len(active.recent),
        usage_events_today=figures.usage_events_today,
        revenue=[
            PlatformRevenuePublic(currency=c, month_to_date_micros=m)
            for c, m in sorted(figures.revenue_month_to_date.items())
        ],
        deadletters_open=max(0, stored_letters - replayed),
        fraud_alerts_24h=figures.fraud_alerts_24h,
        ledger_entries=figures.ledger_entries,
    )

"""Response schemas of the dashboards' reads (``api/routes/insights.py``, docs/api.md).

Money is integer micros next to its currency; quantities are decimal strings; times are
RFC 3339 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Granularity = Literal["hour", "day"]


class UsageBucketPublic(BaseModel):
    bucket: datetime = Field(description="Start of the hour or UTC day of occurred_at.")
    meter: str
    quantity: str = Field(description="Decimal string, e.g. '12.5'.")
    spend_micros: int
    entries: int


class UsagePublic(BaseModel):
    customer_id: str
    currency: str
    granularity: Granularity
    since: datetime = Field(description="Inclusive, aligned to the bucket.")
    until: datetime = Field(description="Exclusive, aligned to the bucket.")
    buckets: list[UsageBucketPublic] = Field(
        description="Ascending by bucket, then meter; a bucket without usage is absent."
    )


class StatementSummaryPublic(BaseModel):
    month: str = Field(description="YYYY-MM in the customer's time zone (by posting time).")
    opening_balance_micros: int
    topups_micros: int
    usage_micros: int = Field(description="Negative: what usage debited.")
    refunds_micros: int = Field(description="Refunds and chargebacks; negative.")
    adjustments_micros: int = Field(description="Signed: manual credits and debits.")
    closing_balance_micros: int = Field(description="opening + the four movements, exactly.")
    entries: int


class StatementListPublic(BaseModel):
    customer_id: str
    currency: str
    timezone: str
    statements: list[StatementSummaryPublic] = Field(description="Newest month first.")


class StatementLinePublic(BaseModel):
    kind: str = Field(description="usage, topup, refund, chargeback, adjustment.")
    meter: str | None = Field(description="Usage lines; null for payments.")
    quantity: str | None = Field(description="Usage lines: decimal string; null for payments.")
    amount_micros: int
    entries: int


class StatementPublic(StatementSummaryPublic):
    customer_id: str
    currency: str
    timezone: str
    lines: list[StatementLinePublic] = Field(description="By kind, then meter.")


class RevenuePublic(BaseModel):
    currency: str
    month_to_date_micros: int
    previous_month_micros: int


class TopCustomerPublic(BaseModel):
    customer_id: str
    name: str
    currency: str
    spend_micros: int


class ResellerKpisPublic(BaseModel):
    reseller_id: str
    month: str = Field(description="The current month in the reseller's time zone.")
    timezone: str
    customers_total: int
    customers_active: int = Field(description="With usage in the last 30 days.")
    customers_suspended: int
    churned_customers: int = Field(
        description="Usage in the 30 days before the last 30, none in the last 30."
    )
    churn_rate: str = Field(
        description="churned / customers with usage in the 30 days before; 4 places."
    )
    revenue: list[RevenuePublic] = Field(description="Usage spend per currency.")
    top_customers: list[TopCustomerPublic] = Field(
        description="Month to date: the top 5 of each currency, then by spend."
    )


class PlatformRevenuePublic(BaseModel):
    currency: str
    month_to_date_micros: int


class AdminKpisPublic(BaseModel):
    resellers: int
    customers: int
    customers_active: int = Field(description="With usage in the last 30 days.")
    usage_events_today: int = Field(description="Usage entries applied today (UTC day).")
    revenue: list[PlatformRevenuePublic] = Field(description="Usage spend, this UTC month.")
    deadletters_open: int
    fraud_alerts_24h: int
    ledger_entries: int

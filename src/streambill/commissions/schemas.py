"""Public shapes of month close and payouts: ``XPublic`` out, ``XCreate``-style bodies in.

Amounts are integer micros of the reseller's currency (1 unit = 1,000,000 micros); rates
are decimal strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streambill.commissions.months import MONTH_PATTERN
from streambill.control.schemas import ObjectId, Text

PayoutStatus = Literal["pending", "paid", "failed"]
StatementPayoutStatus = Literal["unpaid", "carried", "pending", "paid"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatementLine(BaseModel):
    customer_id: str
    name: str
    base_micros: int
    commission_micros: int = Field(
        description="Its share of the month's commission: the month's rate on its base, the"
        " rounding remainder handed out so the lines add up to the month exactly."
    )
    bonus_micros: int
    total_micros: int


class LateAdjustment(BaseModel):
    month: str = Field(description="The earlier closed month the late entries belong to.")
    amount_micros: int


class StatementPublic(BaseModel):
    id: str = Field(examples=["st_res_1_2026-10"])
    reseller_id: str
    month: str
    currency: str
    timezone: str
    base_micros: int
    tier: int
    rate: str = Field(description="The month's rate, a decimal fraction: '0.275'.")
    commission_micros: int
    bonus_micros: int
    month_total_micros: int = Field(description="Commission plus bonuses of the month.")
    late_micros: int = Field(description="Late adjustments of earlier closed months.")
    total_micros: int = Field(description="What this statement pays: month total + late.")
    entry_count: int
    lines: list[StatementLine]
    late_adjustments: list[LateAdjustment]
    closed_at: datetime
    payout_id: str | None
    payout_status: StatementPayoutStatus = Field(
        description="unpaid; carried (a run found the reseller's sum below the minimum);"
        " pending or paid (its payout's status)."
    )


class StatementPage(BaseModel):
    items: list[StatementPublic]
    next_cursor: str | None = None


class CloseRequest(_In):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"month": "2026-10"}]}
    )

    month: str = Field(pattern=MONTH_PATTERN, description="YYYY-MM in the resellers' zones.")
    reseller_id: ObjectId | None = Field(default=None, description="Only this reseller.")


class PendingClose(BaseModel):
    reseller_id: str
    closable_at: datetime


class CloseResponse(BaseModel):
    month: str
    statements: list[StatementPublic]
    pending: list[PendingClose] = Field(
        description="Resellers whose month has not ended plus the grace yet."
    )


class PayoutPublic(BaseModel):
    id: str
    run_id: str
    reseller_id: str
    amount_micros: int = Field(description="Whole cents, in micros.")
    currency: str
    statements_micros: int
    carried_in_micros: int = Field(description="Sub-cent remainders of earlier payouts.")
    remainder_micros: int = Field(description="This payout's sub-cent remainder, carried on.")
    statement_ids: list[str]
    method: Literal["sepa", "manual"]
    status: PayoutStatus
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    failed_at: datetime | None


class CarriedPublic(BaseModel):
    reseller_id: str
    currency: str
    due_micros: int
    reason: Literal["below_minimum", "not_positive"]


class RunNote(BaseModel):
    reseller_id: str
    note: str


class PayoutRunPublic(BaseModel):
    id: str
    created_at: datetime
    minimum: str
    payouts: list[PayoutPublic]
    carried: list[CarriedPublic]
    notes: list[RunNote]
    file_id: str | None = Field(description="The pain.001 file of the run's SEPA payouts.")
    file_url: str | None


class ResellerPayouts(BaseModel):
    items: list[PayoutPublic]
    next_cursor: str | None = None
    currency: str
    due_micros: int = Field(
        description="What the next payout run would consider: unpaid statements plus"
        " remainders carried from earlier payouts."
    )


class PayoutFailure(_In):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "IBAN closed (AC04)"}]}
    )

    reason: Text = Field(min_length=1, max_length=500)


class RatePublic(BaseModel):
    day: str
    currency: str
    rate: str = Field(description="Units of the currency per euro.")
    source: str
    updated_at: datetime


class RatePage(BaseModel):
    items: list[RatePublic]
    next_cursor: str | None = None


class RateIn(_In):
    """Checked by the service (code ``invalid_rates``), not by the schema."""

    day: str = Field(max_length=32, examples=["2026-11-20"])
    currency: str = Field(max_length=16, examples=["USD"])
    rate: str = Field(max_length=64, examples=["1.0512"], description="Units per euro.")


class RatesPut(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rates": [
                        {"day": "2026-11-20", "currency": "USD", "rate": "1.0512"},
                        {"day": "2026-11-20", "currency": "GBP", "rate": "0.8431"},
                    ]
                }
            ]
        },
    )

    rates: list[RateIn] = Field(min_length=1, max_length=10_000)


class RatesImported(BaseModel):
    received: int
    stored: int = Field(description="Rows inserted or changed.")
    unchanged: int
    skipped: int = Field(description="Rows of currencies streambill does not bill in, and EUR.")
    skipped_currencies: list[str]

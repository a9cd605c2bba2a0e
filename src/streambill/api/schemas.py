"""Response schemas (the public shape of CONTRACT section 5)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

# A fraud score or its threshold: a model output in [0, 1], never money.
Score = float


class BalancePublic(BaseModel):
    customer_id: str
    currency: str
    balance: str = Field(description="Decimal string in major units, e.g. '19.775'.")
    balance_micros: int
    seq: int
    updated_at: datetime


class LedgerEntryPublic(BaseModel):
    entry_id: str
    source_event_id: str
    source_topic: str
    customer_id: str
    reseller_id: str | None
    kind: str
    meter: str | None
    quantity: str | None
    amount_micros: int
    balance_micros: int
    currency: str
    seq: int
    occurred_at: datetime
    applied_at: datetime


class LedgerPage(BaseModel):
    entries: list[LedgerEntryPublic]
    next_before_seq: int | None = Field(
        default=None, description="Pass as before_seq to read the next (older) page."
    )


class ForecastPublic(BaseModel):
    """The forecast agent's latest view of a customer (docs/api.md, docs/ml.md)."""

    customer_id: str
    currency: str
    daily_units: list[float] = Field(
        description="Units the customer is forecast to use on each of the next 7 days"
        " (3 decimals); all zeros before the agent learned anything.",
        min_length=7,
        max_length=7,
    )
    depletion_at: datetime | None = Field(
        description="When the balance runs out at the forecast pace; null: not within 7 days."
    )
    recommended_topup: str | None = Field(
        description="Decimal string in major units, e.g. '25.00'; null: no top-up needed."
    )
    recommended_topup_micros: int | None
    balance_micros: int = Field(description="The balance the forecast started from.")
    days_learned: int = Field(description="Days of the customer's usage the model has seen.")
    updated_at: datetime | None


class FraudScorePublic(BaseModel):
    """One ``billing.fraud.v1`` score (scores are model outputs in [0, 1], not money)."""

    score_id: str
    customer_id: str
    reseller_id: str | None
    source: str = Field(description="usage or payment")
    event_id: str
    kind: str
    score: Score
    unsupervised: Score
    supervised: Score | None
    threshold: Score
    suspected: bool
    occurred_at: datetime
    scored_at: datetime


class FraudScoreList(BaseModel):
    items: list[FraudScorePublic] = Field(description="Newest event first, each score once.")

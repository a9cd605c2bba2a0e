"""Response schemas (the public shape of CONTRACT section 5)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


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

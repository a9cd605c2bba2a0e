"""Kafka messages -> ClickHouse rows. Pure functions, no I/O.

Each consumed topic has a :class:`TableSpec`: the table it lands in, the column order, a mapper
from the raw message to a row tuple, and the row's id (what the table collapses on, and what
the sink deduplicates a batch by). Rows are ``NamedTuple``s: they are inserted as they are and
kept in memory by the live ledger view, where a tuple costs a fraction of a dict.

A mapper raises :class:`~streambill.errors.InvalidEvent` for a message it cannot map; the sink
logs it with its position and skips it (the worker dead-letters bad usage; a bad ledger entry
is a bug upstream, and stopping the sink for it would stop the dashboards, not fix it).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from streambill.domain.money import DECIMAL_CONTEXT, parse_decimal
from streambill.errors import InvalidEvent
from streambill.streams import topics
from streambill.streams.events import (
    CURRENCIES,
    Alert,
    DeadLetter,
    LedgerEntry,
    UsageEvent,
    decode_object,
    fast_usage,
    iso_aware,
)

M = TypeVar("M", bound=BaseModel)

# Decimal(38, 9): quantities are stored to the nano-unit, rounded half-even like money.
QUANTITY_SCALE: Final = Decimal("0.000000001")
QUANTITY_MAX: Final = Decimal(10) ** 29


class LedgerRow(NamedTuple):
    entry_id: str
    source_event_id: str
    source_topic: str
    customer_id: str
    reseller_id: str | None
    kind: str
    meter: str | None
    quantity_text: str | None
    quantity: Decimal
    amount_micros: int
    balance_micros: int
    currency: str
    seq: int
    occurred_at: datetime
    applied_at: datetime


class UsageRow(NamedTuple):
    event_id: str
    customer_id: str
    meter: str
    quantity_text: str
    quantity: Decimal
    occurred_at: datetime
    attributes: str
    kafka_partition: int
    kafka_offset: int


class AlertRow(NamedTuple):
    alert_id: str
    customer_id: str
    reseller_id: str | None
    kind: str
    details: str
    created_at: datetime


class DeadLetterRow(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    error_code: str
    reason: str
    failed_at: datetime


Row = LedgerRow | UsageRow | AlertRow | DeadLetterRow
Mapper = Callable[[bytes, int, int], Any]


def utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already (ClickHouse returns those).

    >>> utc(datetime(2026, 1, 1, 12, 0)).isoformat()
    '2026-01-01T12:00:00+00:00'
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def quantity_decimal(value: object) -> Decimal:
    """A quantity as ClickHouse ``Decimal(38, 9)``: rounded half-even to 9 places, bounded.

    >>> quantity_decimal("1.5")
    Decimal('1.500000000')
    >>> quantity_decimal("0.0000000015")
    Decimal('2E-9')
    """
    number = parse_decimal(value, field="quantity")
    try:
        result = number.quantize(QUANTITY_SCALE, rounding=ROUND_HALF_EVEN, context=DECIMAL_CONTEXT)
    except InvalidOperation:
        raise InvalidEvent(f"quantity: out of range: {value!r}") from None
    if abs(result) >= QUANTITY_MAX:
        raise InvalidEvent(f"quantity: out of range: {value!r}")
    return result


def _model(model: type[M], raw: bytes) -> M:
    return _validated(model, decode_object(raw))


def _validated(model: type[M], obj: dict[str, Any]) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "event"
        raise InvalidEvent(f"{loc}: {first['msg']}") from None


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def ledger_row(raw: bytes, partition: int = 0, offset: int = 0) -> LedgerRow:
    """A ``billing.ledger.v1`` message as a ledger row.

    The sink maps every ledger entry and every usage event the worker sees, next to the
    worker on the same cores: validating each with its pydantic model was a quarter of the
    sink's CPU. The common, well-formed shape is checked by hand (exact types, the ISO
    timestamps pydantic and ``datetime.fromisoformat`` read alike); anything else goes
    through the model, which decides and words every rejection.
    tests/unit/test_analytics_rows.py compares both paths.
    """
    obj = decode_object(raw)
    row = _fast_ledger_row(obj)
    return row if row is not None else _ledger_row_from_model(obj)


_MISSING: Final = object()


def _fast_ledger_row(obj: dict[str, Any]) -> LedgerRow | None:
    get = obj.get
    entry_id = get("entry_id")
    source_event_id = get("source_event_id")
    source_topic = get("source_topic")
    customer_id = get("customer_id")
    kind = get("kind")
    reseller_id = get("reseller_id", _MISSING)  # required, may be null
    meter = get("meter")
    quantity_text = get("quantity")
    amount_micros = get("amount_micros")
    balance_micros = get("balance_micros")
    currency = get("currency")
    seq = get("seq")
    if not (
        type(entry_id) is str
        and type(source_event_id) is str
        and type(source_topic) is str
        and type(customer_id) is str
        and type(kind) is str
        and (reseller_id is None or type(reseller_id) is str)
        and (meter is None or type(meter) is str)
        and (quantity_text is None or type(quantity_text) is str)
        and type(amount_micros) is int
        and type(balance_micros) is int
        and type(seq) is int
        and seq >= 1
        and type(currency) is str
        and currency in CURRENCIES
    ):
        return None
    occurred_at = iso_aware(get("occurred_at"))
    applied_at = iso_aware(get("applied_at"))
    if occurred_at is None or applied_at is None:
        return None
    quantity = Decimal(0) if quantity_text is None else quantity_decimal(quantity_text)
    return LedgerRow(
        entry_id,
        source_event_id,
        source_topic,
        customer_id,
        reseller_id,
        kind,
        meter,
        quantity_text,
        quantity,
        amount_micros,
        balance_micros,
        currency,
        seq,
        utc(occurred_at),
        utc(applied_at),
    )


def _ledger_row_from_model(obj: dict[str, Any]) -> LedgerRow:
    entry = _validated(LedgerEntry, obj)
    if entry.seq < 1:
        raise InvalidEvent(f"seq: must be >= 1, got {entry.seq}")
    quantity = Decimal(0) if entry.quantity is None else quantity_decimal(entry.quantity)
    return LedgerRow(
        entry.entry_id,
        entry.source_event_id,
        entry.source_topic,
        entry.customer_id,
        entry.reseller_id,
        entry.kind,
        entry.meter,
        entry.quantity,
        quantity,
        entry.amount_micros,
        entry.balance_micros,
        entry.currency,
        entry.seq,
        utc(entry.occurred_at),
        utc(entry.applied_at),
    )


def usage_row(raw: bytes, partition: int = 0, offset: int = 0) -> UsageRow:
    """A ``billing.usage.v1`` message that decodes under the worker's own rules (through
    the worker's hot-path decoder, which falls back to the model on any doubt)."""
    obj = decode_object(raw)
    event = fast_usage(obj)  # the model's result (or its error) when not the common shape
    attributes = event.attributes if isinstance(event, UsageEvent) else obj.get("attributes", {})
    return UsageRow(
        event.event_id,
        event.customer_id,
        event.meter,
        str(event.quantity),
        quantity_decimal(event.quantity),
        utc(event.occurred_at),
        _json_text(attributes),
        partition,
        offset,
    )


def alert_row(raw: bytes, partition: int = 0, offset: int = 0) -> AlertRow:
    alert = _model(Alert, raw)
    return AlertRow(
        alert.alert_id,
        alert.customer_id,
        alert.reseller_id,
        alert.kind,
        _json_text(alert.details),
        utc(alert.created_at),
    )


def deadletter_row(raw: bytes, partition: int = 0, offset: int = 0) -> DeadLetterRow:
    letter = _model(DeadLetter, raw)
    return DeadLetterRow(
        letter.topic,
        letter.partition,
        letter.offset,
        letter.key,
        letter.value,
        letter.error_code,
        letter.reason,
        utc(letter.failed_at),
    )


@dataclass(frozen=True)
class TableSpec:
    topic: str
    table: str
    columns: tuple[str, ...]
    mapper: Mapper
    row_id: Callable[[Any], Hashable]


TABLE_SPECS: Final[dict[str, TableSpec]] = {
    spec.topic: spec
    for spec in (
        TableSpec(topics.LEDGER, "ledger", LedgerRow._fields, ledger_row, lambda r: r.entry_id),
        TableSpec(
            topics.USAGE,
            "usage",
            UsageRow._fields,
            usage_row,
            lambda r: (r.customer_id, r.event_id),
        ),
        TableSpec(topics.ALERTS, "alerts", AlertRow._fields, alert_row, lambda r: r.alert_id),
        TableSpec(
            topics.DEADLETTER,
            "deadletters",
            DeadLetterRow._fields,
            deadletter_row,
            lambda r: (r.topic, r.partition, r.offset),
        ),
    )
}


def ledger_entry_json(row: LedgerRow) -> dict[str, Any]:
    """A ledger row in the contract's JSON shape (CONTRACT section 4), for the api."""
    return {
        "entry_id": row.entry_id,
        "source_event_id": row.source_event_id,
        "source_topic": row.source_topic,
        "customer_id": row.customer_id,
        "reseller_id": row.reseller_id,
        "kind": row.kind,
        "meter": row.meter,
        "quantity": row.quantity_text,
        "amount_micros": row.amount_micros,
        "balance_micros": row.balance_micros,
        "currency": row.currency,
        "seq": row.seq,
        "occurred_at": utc(row.occurred_at).isoformat(),
        "applied_at": utc(row.applied_at).isoformat(),
    }

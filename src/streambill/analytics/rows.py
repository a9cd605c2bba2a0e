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

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from streambill.analytics.fraud_scores import FraudScoreRow, fraud_score_row
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


class CommissionRow(NamedTuple):
    """A ``billing.commissions.v1`` entry: the ``commissions`` table's columns, in order."""

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
    customers: dict[str, int]  # an accrual slice: each customer's part of base_delta_micros
    facts: int  # the ledger entries the entry sums
    source_entry_id: str
    source_kind: str
    source_amount_micros: int
    source_currency: str
    fx_rate: str | None
    fx_date: date | None
    occurred_at: datetime
    created_at: datetime


Row = LedgerRow | UsageRow | AlertRow | DeadLetterRow | CommissionRow | FraudScoreRow
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


COMMISSION_KINDS: Final = frozenset(
    {"accrual", "true_up", "bonus_new_customer", "bonus_loyalty", "bonus_high_usage"}
)
_MONTH: Final = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])")
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT64_MAX: Final = 2**63 - 1
_TIER_MAX: Final = 255  # UInt8
_TEXT_MAX: Final = 256
_ID_FIELDS: Final = ("entry_id", "reseller_id", "source_entry_id", "source_kind")
_FACTS_MAX: Final = 2**32 - 1  # UInt32
_SLICE_CUSTOMERS_MAX: Final = 10_000
_MICROS_FIELDS: Final = (
    "amount_micros",
    "base_micros",
    "base_delta_micros",
    "month_commission_micros",
    "month_bonus_micros",
    "source_amount_micros",
)


def commission_row(raw: bytes, partition: int = 0, offset: int = 0) -> CommissionRow:
    """A ``billing.commissions.v1`` entry as a row, every field checked for type and range.

    Strict because these rows are money that resellers are paid: an entry of the wrong shape
    is an upstream bug to see in the sink's log (``InvalidEvent``), not a row to sum.

    The agent sums the accrual parts of many facts into one entry (a *slice*): ``customers``
    then maps each customer to its part of ``base_delta_micros`` (the parts add up to it),
    ``facts`` counts the ledger entries, and ``customer_id`` is empty when the slice covers
    several customers. An entry without these fields stands for one ledger entry of
    ``customer_id``.

    >>> row = commission_row(b'{"entry_id": "e1:accrual", "reseller_id": "res_1",'
    ...     b' "customer_id": "cus_1", "month": "2026-11", "kind": "accrual",'
    ...     b' "amount_micros": 55000000, "currency": "EUR", "base_micros": 1100000000,'
    ...     b' "base_delta_micros": 200000000, "tier": 1, "rate": "0.275", "position": 17,'
    ...     b' "month_commission_micros": 302500000, "month_bonus_micros": 0,'
    ...     b' "source_entry_id": "e1", "source_kind": "usage",'
    ...     b' "source_amount_micros": 216000000, "source_currency": "USD",'
    ...     b' "fx_rate": "0.9259259259", "fx_date": "2026-11-20",'
    ...     b' "occurred_at": "2026-11-03T11:00:00+01:00",'
    ...     b' "created_at": "2026-11-03T10:00:00.123456+00:00"}')
    >>> row.amount_micros, row.rate, row.fx_date, row.occurred_at.hour
    (55000000, '0.275', datetime.date(2026, 11, 20), 10)
    """
    obj = decode_object(raw)
    get = obj.get
    for name in _ID_FIELDS:
        _require_text(name, get(name))
    for name in _MICROS_FIELDS:
        _require_micros(name, get(name))
    customer_id = get("customer_id")
    if type(customer_id) is not str or len(customer_id) > _TEXT_MAX:
        raise InvalidEvent(f"customer_id: want a string (empty: several), got {customer_id!r}")
    customers = _slice_customers(get("customers", {}), obj["base_delta_micros"])
    facts = get("facts", 1)
    if type(facts) is not int or not 0 <= facts <= _FACTS_MAX:
        raise InvalidEvent(f"facts: want an integer 0..{_FACTS_MAX}, got {facts!r}")
    month, kind, tier, position = get("month"), get("kind"), get("tier"), get("position")
    if type(month) is not str or _MONTH.fullmatch(month) is None:
        raise InvalidEvent(f"month: want YYYY-MM, got {month!r}")
    if kind not in COMMISSION_KINDS:
        raise InvalidEvent(f"kind: want one of {sorted(COMMISSION_KINDS)}, got {kind!r}")
    if type(tier) is not int or not 0 <= tier <= _TIER_MAX:
        raise InvalidEvent(f"tier: want an integer 0..{_TIER_MAX}, got {tier!r}")
    if type(position) is not int or not 1 <= position <= _INT64_MAX:
        raise InvalidEvent(f"position: want an integer >= 1, got {position!r}")
    currency = _currency("currency", get("currency"))
    source_currency = _currency("source_currency", get("source_currency"))
    rate = _rate_text("rate", get("rate"), at_most_one=True)
    fx_rate, fx_date = _fx(get("fx_rate"), get("fx_date"), currency != source_currency)
    occurred_at, created_at = _instant("occurred_at", obj), _instant("created_at", obj)
    return CommissionRow(
        obj["entry_id"],
        obj["reseller_id"],
        customer_id,
        month,
        kind,
        obj["amount_micros"],
        currency,
        obj["base_micros"],
        obj["base_delta_micros"],
        tier,
        rate,
        position,
        obj["month_commission_micros"],
        obj["month_bonus_micros"],
        customers,
        facts,
        obj["source_entry_id"],
        obj["source_kind"],
        obj["source_amount_micros"],
        source_currency,
        fx_rate,
        fx_date,
        occurred_at,
        created_at,
    )


def _require_text(name: str, value: object) -> None:
    if type(value) is not str or not 1 <= len(value) <= _TEXT_MAX:
        raise InvalidEvent(f"{name}: want a string of 1..{_TEXT_MAX} characters, got {value!r}")


def _require_micros(name: str, value: object) -> None:
    if type(value) is not int or abs(value) > _INT64_MAX:
        raise InvalidEvent(f"{name}: want integer micros, got {value!r}")


def _slice_customers(value: object, base_delta_micros: int) -> dict[str, int]:
    """Customer -> its part of the entry's base: each part integer micros, summing to it."""
    if type(value) is not dict or len(value) > _SLICE_CUSTOMERS_MAX:
        raise InvalidEvent(f"customers: want an object of at most {_SLICE_CUSTOMERS_MAX} parts")
    for customer_id, part in value.items():
        _require_text("customers key", customer_id)
        _require_micros(f"customers[{customer_id!r}]", part)
    if value and sum(value.values()) != base_delta_micros:
        raise InvalidEvent(f"customers: the parts sum to {sum(value.values())}, not the base delta")
    return value


def _currency(name: str, value: object) -> str:
    if type(value) is not str or value not in CURRENCIES:
        raise InvalidEvent(f"{name}: want one of {sorted(CURRENCIES)}, got {value!r}")
    return value


def _rate_text(name: str, value: object, *, at_most_one: bool) -> str:
    """A rate as the decimal string it was sent as: finite, not negative (a commission
    rate also at most 1)."""
    if type(value) is not str or not 1 <= len(value) <= 40:
        raise InvalidEvent(f"{name}: want a decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidEvent(f"{name}: not a decimal number: {value!r}") from None
    if not number.is_finite() or number < 0 or (at_most_one and number > 1):
        raise InvalidEvent(f"{name}: out of range: {value!r}")
    return value


def _fx(rate: object, day: object, foreign: bool) -> tuple[str | None, date | None]:
    """The exchange rate and its day, both set or both null: null for a customer billed in
    the reseller's currency, and for an entry of another currency's customer that converted
    nothing (a top-up's bonus is a fixed amount)."""
    if rate is None and day is None:
        return None, None
    if not foreign:
        raise InvalidEvent("fx_rate, fx_date: must be null when source_currency == currency")
    text = _rate_text("fx_rate", rate, at_most_one=False)
    if Decimal(text) == 0:
        raise InvalidEvent(f"fx_rate: must be positive, got {text!r}")
    if type(day) is not str or _DAY.fullmatch(day) is None:
        raise InvalidEvent(f"fx_date: want YYYY-MM-DD, got {day!r}")
    try:
        return text, date.fromisoformat(day)
    except ValueError:
        raise InvalidEvent(f"fx_date: want YYYY-MM-DD, got {day!r}") from None


def _instant(name: str, obj: dict[str, Any]) -> datetime:
    value = iso_aware(obj.get(name))
    if value is None:
        raise InvalidEvent(f"{name}: want an RFC 3339 time with an offset, got {obj.get(name)!r}")
    return utc(value)


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
        TableSpec(
            topics.COMMISSIONS,
            "commissions",
            CommissionRow._fields,
            commission_row,
            lambda r: r.entry_id,
        ),
        TableSpec(
            topics.FRAUD,
            "fraud_scores",
            FraudScoreRow._fields,
            fraud_score_row,
            lambda r: r.score_id,
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

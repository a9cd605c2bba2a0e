"""Fraud scores in ClickHouse: the row a ``billing.fraud.v1`` message becomes, and the reads.

The mapper is strict, like the commission rows': a score of the wrong shape is a bug in the
fraud agent, to be seen in the sink's log (:class:`~streambill.errors.InvalidEvent`, skipped
and counted like every topic's bad message), not a row to show to a reseller. Scores are
model outputs in [0, 1] (JSON numbers, 4 decimals), not money.

Reads take the blocking clickhouse-connect client first (the api runs them through
``AsyncClickHouse.run``). ``fraud_scores`` collapses a replayed ``score_id`` only at merge
time, so they read ``LIMIT 1 BY score_id``: one copy per score (a replay is the same
event scored again; which copy is shown does not matter, preferring the later scoring).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, NamedTuple

from clickhouse_connect.driver.client import Client

from streambill.errors import InvalidEvent
from streambill.streams.events import decode_object, iso_aware

SOURCES: Final = frozenset({"usage", "payment"})
KINDS: Final = frozenset({"usage", "topup", "refund", "chargeback", "adjustment", "topup_failed"})
SCORES_LIMIT_MAX: Final = 1000
SCORE_STEP: Final = Decimal("0.0001")  # scores carry 4 decimals; the column holds them exactly
_TEXT_MAX: Final = 256
_EVENT_ID_MAX: Final = 128


class FraudScoreRow(NamedTuple):
    """A ``billing.fraud.v1`` message: the ``fraud_scores`` table's columns, in order."""

    score_id: str
    customer_id: str
    reseller_id: str | None
    source: str
    event_id: str
    kind: str
    score: Decimal
    unsupervised: Decimal
    supervised: Decimal | None
    threshold: Decimal
    suspected: bool
    occurred_at: datetime
    scored_at: datetime


def fraud_score_row(raw: bytes, partition: int = 0, offset: int = 0) -> FraudScoreRow:
    """A ``billing.fraud.v1`` message as a row, every field checked for type and range.

    >>> row = fraud_score_row(b'{"score_id": "fs_0123456789abcdef0123", "customer_id": "cus_1",'
    ...     b' "reseller_id": null, "source": "usage", "event_id": "call-1", "kind": "usage",'
    ...     b' "score": 0.8731, "unsupervised": 0.8731, "supervised": null, "threshold": 0.9,'
    ...     b' "suspected": false, "occurred_at": "2026-11-25T11:00:00+01:00",'
    ...     b' "scored_at": "2026-11-25T10:00:00.5+00:00"}')
    >>> row.score, row.supervised, row.suspected, row.occurred_at.hour
    (Decimal('0.8731'), None, False, 10)
    """
    obj = decode_object(raw)
    get = obj.get
    score_id = _text("score_id", get("score_id"), _TEXT_MAX)
    customer_id = _text("customer_id", get("customer_id"), _TEXT_MAX)
    reseller_id = get("reseller_id")
    if reseller_id is not None:
        reseller_id = _text("reseller_id", reseller_id, _TEXT_MAX)
    source, kind = get("source"), get("kind")
    if source not in SOURCES:
        raise InvalidEvent(f"source: want one of {sorted(SOURCES)}, got {source!r}")
    if kind not in KINDS:
        raise InvalidEvent(f"kind: want one of {sorted(KINDS)}, got {kind!r}")
    event_id = _text("event_id", get("event_id"), _EVENT_ID_MAX)
    supervised = get("supervised")
    suspected = get("suspected")
    if type(suspected) is not bool:
        raise InvalidEvent(f"suspected: want true or false, got {suspected!r}")
    return FraudScoreRow(
        score_id,
        customer_id,
        reseller_id,
        source,
        event_id,
        kind,
        _unit("score", get("score")),
        _unit("unsupervised", get("unsupervised")),
        None if supervised is None else _unit("supervised", supervised),
        _unit("threshold", get("threshold")),
        suspected,
        _instant("occurred_at", get("occurred_at")),
        _instant("scored_at", get("scored_at")),
    )


def _text(name: str, value: object, most: int) -> str:
    if type(value) is not str or not 1 <= len(value) <= most:
        raise InvalidEvent(f"{name}: want a string of 1..{most} characters, got {value!r}")
    return value


def _unit(name: str, value: object) -> Decimal:
    """A score: a JSON number in [0, 1] (not a bool, not NaN), exact to 4 decimals.

    >>> _unit("score", 0.87315), _unit("score", 1)
    (Decimal('0.8732'), Decimal('1.0000'))
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{name}: want a number in [0, 1], got {value!r}")
    number = Decimal(repr(value))  # the shortest text of the number: 0.8731, not 0.87309999…
    if not (number.is_finite() and 0 <= number <= 1):
        raise InvalidEvent(f"{name}: want a number in [0, 1], got {value!r}")
    return number.quantize(SCORE_STEP, rounding=ROUND_HALF_EVEN)


def _instant(name: str, value: object) -> datetime:
    found = iso_aware(value)
    if found is None and type(value) is str:
        try:
            found = datetime.fromisoformat(value)
        except ValueError:
            found = None
    if found is None or found.tzinfo is None:
        raise InvalidEvent(f"{name}: want an RFC 3339 time with an offset, got {value!r}")
    return found.astimezone(UTC)


# -- reads ------------------------------------------------------------------------------------

_COLUMNS: Final = ", ".join(FraudScoreRow._fields)
# Newest first; of a replayed score's copies, the later scoring (LIMIT 1 BY keeps the first).
_NEWEST: Final = " ORDER BY occurred_at DESC, score_id, scored_at DESC LIMIT 1 BY score_id"


def customer_scores(client: Client, customer_id: str, limit: int = 100) -> list[FraudScoreRow]:
    """The customer's scores, newest event first, each ``score_id`` once."""
    limit = max(1, min(limit, SCORES_LIMIT_MAX))
    rows = client.query(
        f"SELECT {_COLUMNS} FROM fraud_scores WHERE customer_id = {{c:String}}"
        + _NEWEST
        + " LIMIT {limit:UInt32}",
        parameters={"c": customer_id, "limit": limit},
    ).result_rows
    return [_row(r) for r in rows]


def suspected_scores(
    client: Client, reseller_id: str | None, limit: int = 100
) -> list[FraudScoreRow]:
    """Suspected events, newest first, each ``score_id`` once: one reseller's customers', or
    (``reseller_id`` None) every customer's."""
    limit = max(1, min(limit, SCORES_LIMIT_MAX))
    where = "suspected"
    parameters: dict[str, Any] = {"limit": limit}
    if reseller_id is not None:
        where += " AND reseller_id = {r:String}"
        parameters["r"] = reseller_id
    rows = client.query(
        f"SELECT {_COLUMNS} FROM fraud_scores WHERE {where}" + _NEWEST + " LIMIT {limit:UInt32}",
        parameters=parameters,
    ).result_rows
    return [_row(r) for r in rows]


def _row(row: Sequence[Any]) -> FraudScoreRow:
    values = list(row)
    values[10] = bool(values[10])
    values[11] = _aware(values[11])
    values[12] = _aware(values[12])
    return FraudScoreRow(*values)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

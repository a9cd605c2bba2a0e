"""Dead letters in ClickHouse: their public id, pages newest first, one by id, and counts.

The sink stores every ``billing.deadletter.v1`` record in ``deadletters``, a
ReplacingMergeTree keyed by the position of the input that failed (topic, partition, offset).
A worker that re-processes an input dead-letters it again at the same position, so reads use
``FINAL``: each position once, also across pages.

A letter's id is its position, encoded (``dl_`` and the unpadded URL-safe base64 of
``topic:partition:offset``): deterministic, URL-safe, and decodable, so a replay finds the
letter by its sorting key without a lookup table.

Every function takes the blocking clickhouse-connect client first (the api runs them through
``AsyncClickHouse.run``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from clickhouse_connect.driver.client import Client

from streambill.analytics.rows import DeadLetterRow, utc

ID_PREFIX: Final = "dl_"
PAGE_MAX: Final = 1000
PARTITION_MAX: Final = 2**31 - 1  # Int32
OFFSET_MAX: Final = 2**63 - 1  # Int64
TOPIC_MAX: Final = 249  # Kafka's limit on a topic name
# The id of the longest position: a topic of TOPIC_MAX, a 10-digit partition, a 19-digit offset.
ID_LENGTH_MAX: Final = len(ID_PREFIX) + 4 * (TOPIC_MAX + 31) // 3 + 4
_COLUMNS: Final = "topic, `partition`, `offset`, key, value, error_code, reason, failed_at"


class Position(NamedTuple):
    """Where the input that failed was read: what a letter's id names."""

    topic: str
    partition: int
    offset: int


def letter_id(position: Position) -> str:
    """The public id of the letter of ``position``.

    >>> letter_id(Position("billing.usage.v1", 3, 1207))
    'dl_YmlsbGluZy51c2FnZS52MTozOjEyMDc'
    >>> parse_letter_id(letter_id(Position("billing.usage.v1", 3, 1207)))
    Position(topic='billing.usage.v1', partition=3, offset=1207)
    """
    text = f"{position.topic}:{position.partition}:{position.offset}".encode()
    return ID_PREFIX + base64.urlsafe_b64encode(text).decode().rstrip("=")


def parse_letter_id(letter: str) -> Position | None:
    """The position an id names, or None for anything this api did not hand out (a route
    answers 404 for that, as for an id that names no letter).

    >>> parse_letter_id("dl_!!") is None, parse_letter_id("ghost") is None
    (True, True)
    >>> parse_letter_id(letter_id(Position("t", 0, 2**63))) is None  # beyond Int64
    True
    """
    if not letter.startswith(ID_PREFIX) or len(letter) > ID_LENGTH_MAX:
        return None
    body = letter[len(ID_PREFIX) :]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    topic, _, rest = text.rpartition(":")
    topic, _, partition_text = topic.rpartition(":")
    if not topic or not partition_text.isdigit() or not rest.isdigit():
        return None
    partition, offset = int(partition_text), int(rest)
    if partition > PARTITION_MAX or offset > OFFSET_MAX or len(topic) > TOPIC_MAX:
        return None
    position = Position(topic, partition, offset)
    return position if letter_id(position) == letter else None  # one spelling per position


@dataclass(frozen=True)
class LetterFilter:
    """What a page selects: an error code, a source topic (None: any)."""

    error_code: str | None = None
    topic: str | None = None


class Cursor(NamedTuple):
    """Where a page ended: the last letter's time and position (the page's sort key)."""

    failed_at: datetime
    position: Position


def letter_page(
    client: Client, where: LetterFilter, after: Cursor | None, limit: int
) -> list[DeadLetterRow]:
    """Letters newest first (``failed_at``, then position, descending) after ``after``."""
    limit = max(1, min(limit, PAGE_MAX + 1))
    conditions = ["1"]
    parameters: dict[str, Any] = {"limit": limit}
    if where.error_code is not None:
        conditions.append("error_code = {code:String}")
        parameters["code"] = where.error_code
    if where.topic is not None:
        conditions.append("topic = {topic:String}")
        parameters["topic"] = where.topic
    if after is not None:
        conditions.append(
            "(failed_at, topic, `partition`, `offset`) < ({at:DateTime64(6, 'UTC')},"
            " {t:String}, {p:Int32}, {o:Int64})"
        )
        parameters |= {
            "at": utc(after.failed_at),
            "t": after.position.topic,
            "p": after.position.partition,
            "o": after.position.offset,
        }
    rows = client.query(
        f"SELECT {_COLUMNS} FROM deadletters FINAL WHERE {' AND '.join(conditions)}"
        " ORDER BY failed_at DESC, topic DESC, `partition` DESC, `offset` DESC"
        " LIMIT {limit:UInt32}",
        parameters=parameters,
    ).result_rows
    return [_row(r) for r in rows]


def letter_at(client: Client, position: Position) -> DeadLetterRow | None:
    """The letter of one position, or None."""
    rows = client.query(
        f"SELECT {_COLUMNS} FROM deadletters FINAL"
        " WHERE topic = {t:String} AND `partition` = {p:Int32} AND `offset` = {o:Int64}"
        " LIMIT 1",
        parameters={"t": position.topic, "p": position.partition, "o": position.offset},
    ).result_rows
    return _row(rows[0]) if rows else None


def letter_count(client: Client) -> int:
    """How many letters there are (each position once)."""
    rows = client.query("SELECT count() FROM deadletters FINAL").result_rows
    return int(rows[0][0]) if rows else 0


def position_of(row: DeadLetterRow) -> Position:
    return Position(row.topic, row.partition, row.offset)


def _row(row: Sequence[Any]) -> DeadLetterRow:
    topic, partition, offset, key, value, code, reason, failed_at = row
    return DeadLetterRow(
        str(topic),
        int(partition),
        int(offset),
        None if key is None else str(key),
        str(value),
        str(code),
        str(reason),
        utc(failed_at),
    )

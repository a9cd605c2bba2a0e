"""Dead letters (the admin only): what the agents could not apply, and replaying it.

- ``GET /v2/admin/deadletters?limit=&cursor=&error_code=&topic=&status=open|replayed|all``:
  the letters the ClickHouse sink stored, newest first, each with its replay (if any).
- ``POST /v2/admin/deadletters/{id}/replay[?force=true]``: re-produce the original value
  with the original key onto the original topic (usage and payments only), wait for the
  broker's acknowledgement, then record the replay and an audit record. The balances agent
  deduplicates by event_id, so a replay of something applied meanwhile changes nothing; one
  whose cause is still there is dead-lettered again, as a new letter at a new offset.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from streambill.analytics import deadletters as letters
from streambill.analytics.rows import DeadLetterRow
from streambill.api.deps import AdminPrincipal, ApiRuntime, Runtime
from streambill.api.params import Cursor
from streambill.control import deadletters as replays
from streambill.control.deadletters import ReplayRecord
from streambill.errors import Conflict, InvalidEvent, NotFound
from streambill.streams import topics

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v2/admin/deadletters", tags=["operations"])

REPLAYABLE: Final = frozenset({topics.USAGE, topics.PAYMENTS})
REPLAY_TIMEOUT_S: Final = 30.0
# Letters read per round while filtering by status, and rounds per request: a page may come
# back short (with a cursor) when most letters have the other status.
SCAN_ROWS: Final = 500
SCAN_ROUNDS_MAX: Final = 10
CURSOR_TIME_MAX: Final = datetime(2200, 1, 1, tzinfo=UTC)  # DateTime64(6) ends in 2299

Status = Literal["open", "replayed", "all"]
# Longer than any id, so every id this api did not hand out answers 404 alike.
LetterId = Annotated[str, Path(min_length=1, max_length=1024)]
CodeFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
TopicFilter = Annotated[
    str | None, Query(min_length=1, max_length=letters.TOPIC_MAX, pattern=r"^[A-Za-z0-9._\-]+$")
]


class DeadLetterPublic(BaseModel):
    id: str = Field(description="Deterministic and URL-safe, from (topic, partition, offset).")
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="The original payload as text.")
    error_code: str
    reason: str
    failed_at: datetime
    status: Literal["open", "replayed"]
    replayed_at: datetime | None
    replayed_by: str | None
    replays: int = Field(description="How many times it was replayed (0: open).")
    replayable: bool = Field(description="Whether its topic may be replayed (usage, payments).")


class DeadLetterPage(BaseModel):
    deadletters: list[DeadLetterPublic]
    next: str | None = Field(description="Pass as cursor for the next (older) page; null: none.")


def letter_public(row: DeadLetterRow, replay: ReplayRecord | None) -> DeadLetterPublic:
    return DeadLetterPublic(
        id=letters.letter_id(letters.position_of(row)),
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        key=row.key,
        value=row.value,
        error_code=row.error_code,
        reason=row.reason,
        failed_at=row.failed_at,
        status="open" if replay is None else "replayed",
        replayed_at=replay.replayed_at if replay else None,
        replayed_by=replay.replayed_by if replay else None,
        replays=replay.replays if replay else 0,
        replayable=row.topic in REPLAYABLE,
    )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def cursor_after(row: DeadLetterRow) -> letters.Cursor:
    return letters.Cursor(row.failed_at, letters.position_of(row))


def encode_cursor(after: letters.Cursor) -> str:
    """A page's ``next``: the last letter's time in microseconds and its id, opaque.

    >>> at = datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
    >>> after = letters.Cursor(at, letters.Position("billing.usage.v1", 0, 5))
    >>> decode_cursor(encode_cursor(after)) == after
    True
    >>> decode_cursor("bm9wZQ")
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidEvent: cursor is not one this api handed out
    """
    text = f"{_micros(after.failed_at)}|{letters.letter_id(after.position)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> letters.Cursor | None:
    if not cursor:
        return None
    position = None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros_text, _, letter = text.partition("|")
        micros = int(micros_text)
        at = _EPOCH + timedelta(microseconds=micros)
        position = letters.parse_letter_id(letter)
    except (binascii.Error, ValueError, UnicodeDecodeError, OverflowError):
        pass
    if position is None or not _EPOCH <= at < CURSOR_TIME_MAX:
        raise InvalidEvent("cursor is not one this api handed out", code="invalid_request")
    return letters.Cursor(at, position)


def _micros(at: datetime) -> int:
    """Whole microseconds since the epoch, without a float on the way."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@router.get("", response_model=DeadLetterPage)
async def list_deadletters(
    runtime: Runtime,
    _: AdminPrincipal,
    limit: Annotated[int, Query(ge=1, le=letters.PAGE_MAX)] = 100,
    cursor: Cursor = None,
    error_code: CodeFilter = None,
    topic: TopicFilter = None,
    status: Status = "all",
) -> DeadLetterPage:
    """Dead letters newest first (``failed_at``), each position once. ``status``: ``open``
    (never replayed), ``replayed``, or ``all``. A page filtered by status may hold fewer
    than ``limit`` letters while ``next`` is set: keep paging until ``next`` is null."""
    where = letters.LetterFilter(error_code=error_code, topic=topic)
    after = decode_cursor(cursor)
    found: list[DeadLetterPublic] = []
    taken: letters.Cursor | None = None
    # status "all": one more than a page tells whether another page follows.
    size = limit + 1 if status == "all" else SCAN_ROWS
    for _round in range(SCAN_ROUNDS_MAX):
        rows = await runtime.clickhouse.run(letters.letter_page, where, after, size)
        ids = [letters.letter_id(letters.position_of(r)) for r in rows]
        done = await replays.replays_of(runtime.control, ids)
        for row, letter in zip(rows, ids, strict=True):
            replay = done.get(letter)
            if status != "all" and (status == "open") != (replay is None):
                continue
            if len(found) == limit:  # one more matches: the page ends at the last taken
                next_page = encode_cursor(taken) if taken else None
                return DeadLetterPage(deadletters=found, next=next_page)
            found.append(letter_public(row, replay))
            taken = cursor_after(row)
        if len(rows) < size:
            return DeadLetterPage(deadletters=found, next=None)
        after = cursor_after(rows[-1])
    # Scanned SCAN_ROUNDS_MAX rounds: the next page goes on from the last letter read.
    return DeadLetterPage(deadletters=found, next=encode_cursor(after) if after else None)


@router.post("/{letter_id}/replay", response_model=DeadLetterPublic)
async def replay_deadletter(
    letter_id: LetterId,
    runtime: Runtime,
    principal: AdminPrincipal,
    force: bool = False,
) -> DeadLetterPublic:
    """Re-produce the letter's original value with its original key onto its original topic
    and answer once the broker acknowledged it (``broker_unavailable``, 503, otherwise: the
    record may still arrive; replaying again is safe). Usage and payments only (other
    topics: 409 ``not_replayable``); a letter replayed before: 409 ``already_replayed``
    unless ``force=true``; an unknown id: 404."""
    row = await _letter(runtime, letter_id)
    if row.topic not in REPLAYABLE:
        raise Conflict(f"letters of {row.topic} are not replayable", code="not_replayable")
    earlier = (await replays.replays_of(runtime.control, [letter_id])).get(letter_id)
    if earlier is not None and not force:
        raise Conflict(
            f"letter {letter_id} was replayed at {earlier.replayed_at.isoformat()}"
            " (pass force=true to replay it again)",
            code="already_replayed",
        )
    key = _replay_key(row)
    await runtime.producer.send_one(row.topic, key, row.value.encode(), REPLAY_TIMEOUT_S)
    log.info(
        "dead letter replayed",
        extra={"topic": row.topic, "partition": row.partition, "offset": row.offset},
    )
    record = await replays.record_replay(
        runtime.control,
        principal,
        letter_id,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        forced=earlier is not None,
        now=runtime.control.clock(),
    )
    return letter_public(row, record)


async def _letter(runtime: ApiRuntime, letter_id: str) -> DeadLetterRow:
    position = letters.parse_letter_id(letter_id)
    row = None if position is None else await runtime.clickhouse.run(letters.letter_at, position)
    if row is None:
        raise NotFound(f"dead letter {letter_id!r} not found")
    return row


def _replay_key(row: DeadLetterRow) -> bytes:
    """The original key; a record that had none goes under its event's customer_id (where
    the worker would re-route it anyway), and one without either can never be applied."""
    if row.key is not None:
        return row.key.encode()
    try:
        customer_id = orjson.loads(row.value).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        customer_id = None
    if not isinstance(customer_id, str) or not customer_id:
        raise Conflict(
            "the letter has neither a key nor a customer_id: it can never be applied",
            code="not_replayable",
        )
    return customer_id.encode()

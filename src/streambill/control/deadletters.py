"""Dead-letter replays in the control plane: which letters were re-produced, when, by whom.

The letters themselves live in ClickHouse (:mod:`streambill.analytics.deadletters`); this
table only says which of them the admin replayed. A replay is recorded *after* the broker
acknowledged the re-produced record, together with its audit record in one transaction:
a row means the record is on its topic. (A crash between the acknowledgement and the commit
leaves the replay unrecorded, so the letter reads ``open`` and may be replayed again; that is
harmless, the balances agent drops an event_id it has applied.)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from streambill.control.models import DeadletterReplay, User
from streambill.control.plane import ControlPlane, audit
from streambill.control.principal import Principal
from streambill.errors import InvariantViolation

# Ids per lookup: a page of letters is at most 1,001, so one query in practice.
LOOKUP_CHUNK: Final = 1000
# Two first replays of one letter at once: the loser of the insert counts itself up instead.
RECORD_ATTEMPTS: Final = 2


@dataclass(frozen=True)
class ReplayRecord:
    """The latest replay of a letter and how many there were."""

    replayed_at: datetime
    replayed_by: str
    replays: int


def _record(row: DeadletterReplay) -> ReplayRecord:
    return ReplayRecord(row.replayed_at, row.replayed_by, row.replays)


async def replays_of(cp: ControlPlane, letter_ids: Collection[str]) -> dict[str, ReplayRecord]:
    """The replays of those of ``letter_ids`` that were replayed."""
    ids = sorted(set(letter_ids))
    found: dict[str, ReplayRecord] = {}
    async with cp.sessions() as session:
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            query = select(DeadletterReplay).where(DeadletterReplay.id.in_(chunk))
            found |= {row.id: _record(row) for row in await session.scalars(query)}
    return found


async def replayed_count(cp: ControlPlane) -> int:
    """How many letters were replayed at least once."""
    async with cp.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(DeadletterReplay))
    return int(count or 0)


async def record_replay(
    cp: ControlPlane,
    p: Principal,
    letter_id: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    forced: bool,
    now: datetime,
) -> ReplayRecord:
    """Record an acknowledged replay (the first, or one more) and its audit record."""
    for attempt in range(RECORD_ATTEMPTS):
        try:
            async with cp.sessions.begin() as session:
                row = await session.get(DeadletterReplay, letter_id, with_for_update=True)
                # a person by e-mail (a session), a key by its label
                user = await session.get(User, p.user_id) if p.user_id else None
                actor = user.email if user is not None else p.label()
                if row is None:
                    row = DeadletterReplay(
                        id=letter_id,
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        replays=1,
                        replayed_at=now,
                        replayed_by=actor,
                    )
                    session.add(row)
                else:
                    row.replays += 1
                    row.replayed_at = now
                    row.replayed_by = actor
                await session.flush()
                details: dict[str, object] = {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "forced": forced,
                    "replays": row.replays,
                }
                audit(session, now, p, "deadletter.replay", letter_id, details)
                return _record(row)
        except IntegrityError:
            if attempt + 1 == RECORD_ATTEMPTS:
                raise
    raise InvariantViolation("record_replay: no attempt left")  # the loop returns or raises

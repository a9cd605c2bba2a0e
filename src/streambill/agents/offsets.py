"""Where an agent with its own consumer has read a topic to: the ``stream_offsets`` rows of
the auto top-up and commissions agents (consumer name, topic, partition -> the next offset).

Both functions take the caller's session, so an agent can store its offsets in the same
transaction as what it derived from the records before them (the commissions agent's
checkpoints).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from confluent_kafka import Consumer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.control.models import StreamOffset
from streambill.streams import topics


def assigned_consumer(bootstrap: str, name: str, fetch_wait_ms: int, queue_kb: int) -> Consumer:
    """A consumer for partitions the agent assigns itself and whose offsets it keeps in
    ``stream_offsets`` (never committed to the group, never rebalanced by it)."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topics.APP_ID}-{name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "enable.partition.eof": False,
            "queued.max.messages.kbytes": queue_kb,
        }
    )


async def stored_offsets(
    session: SqlSession, consumer: str, topic: str, partitions: Collection[int]
) -> dict[int, int]:
    """partition -> the stored next offset, for the partitions that have one."""
    rows = (
        await session.execute(
            select(StreamOffset.partition, StreamOffset.offset).where(
                StreamOffset.consumer == consumer,
                StreamOffset.topic == topic,
                StreamOffset.partition.in_(partitions),
            )
        )
    ).all()
    return {int(p): int(o) for p, o in rows}


async def store_offsets(
    session: SqlSession, consumer: str, topic: str, offsets: Mapping[int, int], now: datetime
) -> None:
    """Insert or update the next offset of each partition in ``offsets``."""
    for partition, offset in offsets.items():
        row = await session.get(StreamOffset, (consumer, topic, partition))
        if row is None:
            session.add(
                StreamOffset(
                    consumer=consumer,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    updated_at=now,
                )
            )
        else:
            row.offset, row.updated_at = offset, now

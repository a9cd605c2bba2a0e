"""The ``autotopup`` agent: reads the ledger, charges auto top-ups through Stripe.

It reads the ledger partitions with the numbers of the usage partitions this worker owns
(each ledger partition is read by exactly one worker; co-partitioning is not needed for
correctness, since every decision is taken under the customer's locked state row in the
control-plane database, see :mod:`streambill.payments.autotopup`). Most entries are dropped
after a dictionary lookup and a comparison: only entries of customers with auto top-up on
whose balance is below the threshold, and top-up credits, go further.

Where it has read to is kept per partition in the ``stream_offsets`` table, written after
each batch was handled; a partition it never read starts at the end of the log (history
before auto top-up was deployed is not acted on). Re-reading entries after a crash is
harmless: a duplicate never starts a second attempt.

The resolver runs beside it every second: attempts left ``pending`` or ``unknown`` are
looked up at Stripe, processing ones polled, unpublished successes published again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_END, TopicPartition
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.agents.offsets import assigned_consumer, store_offsets, stored_offsets
from streambill.agents.publisher import Publisher
from streambill.engine.balances import Message, partition_for
from streambill.payments.autotopup import AutoTopups, Entry
from streambill.streams import topics

log = logging.getLogger(__name__)

CONSUMER: Final = "autotopup"
BATCH_MAX: Final = 2000
POLL_S: Final = 0.05
RESOLVE_EVERY_S: Final = 1.0
ERROR_BACKOFF_S: Final = 2.0


def decode_entry(raw: bytes) -> Entry | None:
    """The fields the agent needs, or None for a record that is not a ledger entry.

    >>> decode_entry(b'{"customer_id":"c","seq":3,"kind":"usage","source_event_id":"e",'
    ...              b'"balance_micros":5,"applied_at":"2026-11-27T10:00:00+00:00"}').seq
    3
    >>> decode_entry(b'not json') is None
    True
    """
    try:
        obj = orjson.loads(raw)
        return Entry(
            obj["customer_id"],
            int(obj["seq"]),
            obj["kind"],
            obj["source_event_id"],
            int(obj["balance_micros"]),
            datetime.fromisoformat(obj["applied_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class AutoTopupAgent:
    def __init__(
        self,
        bootstrap: str,
        sessions: async_sessionmaker[SqlSession],
        service: AutoTopups,
        threshold_of: Callable[[str], int | None],
        *,
        fetch_wait_ms: int,
        publisher: Publisher | None = None,
    ) -> None:
        self.sessions = sessions
        self._publisher = publisher
        self.service = service
        self.threshold_of = threshold_of
        self._consumer = assigned_consumer(bootstrap, CONSUMER, fetch_wait_ms, 4096)
        self.assigned: set[int] = set()
        self.next_offsets: dict[int, int] = {}
        self._stored: dict[int, int] = {}
        self.entries_read = 0

    async def _start_offsets(self, partitions: set[int]) -> dict[int, int]:
        async with self.sessions() as session:
            return await stored_offsets(session, CONSUMER, topics.LEDGER, partitions)

    async def sync(self, owned: set[int]) -> None:
        gone = self.assigned - owned
        if gone:
            self._consumer.incremental_unassign([TopicPartition(topics.LEDGER, p) for p in gone])
            self.assigned -= gone
            for p in gone:
                self.next_offsets.pop(p, None)
                self._stored.pop(p, None)
        new = owned - self.assigned
        if new:
            stored = await self._start_offsets(new)
            starts = [TopicPartition(topics.LEDGER, p, stored.get(p, OFFSET_END)) for p in new]
            self._consumer.incremental_assign(starts)
            self.assigned |= new
            self._stored.update(stored)
            log.info(
                "auto top-up reads the ledger: %s",
                ", ".join(f"[{tp.partition}]@{tp.offset}" for tp in sorted(starts, key=str)),
            )

    def _read(self) -> list[Any]:
        return [m for m in self._consumer.consume(BATCH_MAX, POLL_S) if m.error() is None]

    async def handle(self, messages: list[Any]) -> None:
        entries = []
        threshold_of = self.threshold_of
        for m in messages:
            partition = m.partition()
            if partition not in self.assigned:
                continue
            self.next_offsets[partition] = m.offset() + 1
            key, value = m.key(), m.value()
            # Customers without auto top-up are skipped before their entry is decoded.
            if key is None or value is None or threshold_of(key.decode()) is None:
                continue
            entry = decode_entry(value)
            if entry is not None:
                entries.append(entry)
        self.entries_read += len(entries)
        if entries:
            await self.service.observe(entries, self.threshold_of)
        await self._store_offsets()

    async def _store_offsets(self) -> None:
        changed = {p: o for p, o in self.next_offsets.items() if self._stored.get(p) != o}
        if not changed:
            return
        async with self.sessions.begin() as session:
            await store_offsets(session, CONSUMER, topics.LEDGER, changed, datetime.now(UTC))
        self._stored.update(changed)

    async def run(self, owned: Callable[[], set[int]], ready: Callable[[], bool]) -> None:
        """Read and handle until cancelled; a database or Stripe outage is waited out."""
        while True:
            try:
                if not ready():
                    await asyncio.sleep(0.05)
                    continue
                wanted = owned()
                if wanted != self.assigned:
                    await self.sync(wanted)
                if not self.assigned:
                    await asyncio.sleep(0.05)
                    continue
                messages = await asyncio.to_thread(self._read)
                if messages:
                    await self.handle(messages)
            except asyncio.CancelledError:
                raise
            except DBAPIError as exc:  # the database is down, or not migrated yet (api starting)
                log.warning(
                    "auto top-up agent: control-plane database unavailable (%s); retry in %.0f s",
                    type(exc.orig).__name__,
                    ERROR_BACKOFF_S,
                )
                self._restart()
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            except Exception:
                log.exception("auto top-up agent: retrying in %.0f s", ERROR_BACKOFF_S)
                self._restart()
                await asyncio.sleep(ERROR_BACKOFF_S)

    def _restart(self) -> None:
        """Re-read from what was stored: nothing handled is lost, duplicates are safe."""
        if self.assigned:
            self._consumer.incremental_unassign(
                [TopicPartition(topics.LEDGER, p) for p in self.assigned]
            )
        self.assigned.clear()
        self.next_offsets.clear()
        self._stored.clear()

    async def resolve_forever(self, ready: Callable[[], bool]) -> None:
        while True:
            await asyncio.sleep(RESOLVE_EVERY_S)
            if not ready():
                continue
            try:
                await self.service.resolve_due()
            except asyncio.CancelledError:
                raise
            except DBAPIError as exc:
                log.warning(
                    "auto top-up resolver: database unavailable (%s)", type(exc.orig).__name__
                )
            except Exception:
                log.exception("auto top-up resolver round failed")

    def close(self) -> None:
        self._consumer.close()
        if self._publisher is not None:
            self._publisher.close()


def payment_publisher(
    publisher: Publisher, partitions: int
) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    """Publish payment events to their customers' canonical partitions, awaited (acks=all).
    ``publisher`` must be the agent's own: a flush waits for everything its producer holds,
    and errors are reported to whoever flushes next."""

    async def publish(payments: list[dict[str, Any]]) -> None:
        messages = []
        for payment in payments:
            key = payment["customer_id"].encode()
            partition = partition_for(key, partitions)
            messages.append(Message(topics.PAYMENTS, partition, key, orjson.dumps(payment)))
        await publisher.publish(messages)

    return publish

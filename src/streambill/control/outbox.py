"""The transactional outbox and its relay.

A change to an account is committed together with an ``outbox`` row holding the message
that describes it; the relay publishes those rows in ``id`` order and marks them published.
Delivery is at least once: a crash between the broker's acknowledgement and the mark sends
the same rows again, in the same order, so per key the topic holds every change in order
(a repeat is the same ``version`` again, which consumers drop or overwrite harmlessly).

One relay publishes at a time: it holds a lease row in the database, renewed while it works;
another api replica takes over when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import orjson
from prometheus_client import Counter, Gauge
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control import leases
from streambill.control.models import OutboxMessage, StreamOffset, Tenant
from streambill.streams.topics import ACCOUNTS

log = logging.getLogger(__name__)

LEASE_NAME: Final = "outbox-relay"
LEASE_TTL_S: Final = 15.0
BATCH_MAX: Final = 500
IDLE_WAIT_S: Final = 1.0
PUBLISH_TIMEOUT_S: Final = 30.0
BACKOFF_S_MAX: Final = 30.0
KEEP_PUBLISHED: Final = timedelta(days=7)
PRUNE_EVERY_S: Final = 3600.0

PUBLISHED = Counter("streambill_outbox_published_total", "Outbox messages published", ["topic"])
PENDING = Gauge("streambill_outbox_pending", "Outbox messages not yet published (last seen)")
FAILURES = Counter("streambill_outbox_failures_total", "Relay rounds that failed")


class Publisher(Protocol):
    async def send(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        timeout_s: float,
        positions: dict[int, int] | None = None,
    ) -> None: ...


def account_message(tenant: Tenant) -> dict[str, Any]:
    """The ``billing.accounts.v1`` value for a tenant (CONTRACT section 4, plus ``version``
    and ``timezone``, extensions that consumers may ignore)."""
    return {
        "account_id": tenant.id,
        "kind": tenant.kind,
        "parent_id": tenant.parent_id,
        "name": tenant.name,
        "currency": tenant.currency,
        "status": tenant.status,
        "prices": tenant.prices,
        "auto_topup": tenant.auto_topup,
        "low_balance_threshold": tenant.low_balance_threshold,
        "timezone": tenant.timezone,
        "commission_plan": tenant.commission_plan,
        "version": tenant.version,
        "updated_at": tenant.updated_at.astimezone(UTC).isoformat(),
    }


def enqueue(
    session: SqlSession, topic: str, key: str, value: dict[str, Any], now: datetime
) -> None:
    """Add a message to the outbox in the caller's transaction."""
    session.add(
        OutboxMessage(topic=topic, key=key, payload=orjson.dumps(value).decode(), created_at=now)
    )


def enqueue_account(session: SqlSession, tenant: Tenant, now: datetime) -> None:
    enqueue(session, ACCOUNTS, tenant.id, account_message(tenant), now)


class OutboxRelay:
    """Publishes outbox rows in order while it holds the lease.

    ``wake()`` after a commit starts a round at once; otherwise it polls every second (other
    replicas' commits). Failures back off exponentially and keep every row for the retry.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[SqlSession],
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        holder: str | None = None,
        before_mark: Callable[[list[int]], Awaitable[None]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._clock = clock
        self.holder = holder or f"relay-{secrets.token_hex(6)}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        # Tests use this to crash between the broker's acknowledgement and the mark.
        self._before_mark = before_mark
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=PUBLISH_TIMEOUT_S + 5)
            except TimeoutError:
                self._task.cancel()
            except Exception:
                log.exception("outbox relay had failed")
            self._task = None
        await self._release()

    async def _run(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            self._wake.clear()  # a commit from here on starts another round
            try:
                busy = await self.run_once()
                backoff = 0.0
                self.last_error = None
            except Exception as exc:
                FAILURES.inc()
                backoff = min(BACKOFF_S_MAX, max(0.5, backoff * 2))
                self.last_error = f"{exc!r}"
                log.warning("outbox relay round failed; retrying in %.1f s", backoff, exc_info=True)
                busy = False
                await self._sleep(backoff)
                continue
            if not busy:
                await self._sleep(IDLE_WAIT_S)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def run_once(self) -> bool:
        """One round: take or renew the lease, publish up to a batch. True if more may wait."""
        if not await self._acquire():
            return False
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    .order_by(OutboxMessage.id)
                    .limit(BATCH_MAX)
                )
            ).all()
        PENDING.set(len(rows))
        if not rows:
            await self._prune()
            return False
        positions = await self._publish(rows)
        ids = [row.id for row in rows]
        if self._before_mark is not None:
            await self._before_mark(ids)
        now = self._clock()
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(published_at=now)
            )
            await _store_positions(session, positions, now)
        return len(rows) == BATCH_MAX

    async def _publish(self, rows: Sequence[OutboxMessage]) -> dict[tuple[str, int], int]:
        """Consecutive rows of one topic go in one call; the calls run in row order, so a
        key's messages (always on one topic) keep their order. Returns (topic, partition) ->
        the next offset after the published rows."""
        positions: dict[tuple[str, int], int] = {}
        start = 0
        while start < len(rows):
            topic = rows[start].topic
            end = start
            while end < len(rows) and rows[end].topic == topic:
                end += 1
            records = [(r.key.encode(), r.payload.encode()) for r in rows[start:end]]
            acknowledged: dict[int, int] = {}
            await self._publisher.send(topic, records, PUBLISH_TIMEOUT_S, acknowledged)
            for partition, offset in acknowledged.items():
                key = (topic, partition)
                positions[key] = max(positions.get(key, 0), offset)
            PUBLISHED.labels(topic).inc(len(records))
            start = end
        return positions

    async def _acquire(self) -> bool:
        return await leases.acquire(
            self._sessions, LEASE_NAME, self.holder, LEASE_TTL_S, self._clock()
        )

    async def _release(self) -> None:
        await leases.release(self._sessions, LEASE_NAME, self.holder)

    async def _prune(self) -> None:
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = loop_now
        cutoff = self._clock() - KEEP_PUBLISHED
        async with self._sessions.begin() as session:
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.published_at.is_not(None), OutboxMessage.published_at < cutoff
                )
            )


POSITIONS_CONSUMER: Final = "outbox-relay"


async def _store_positions(
    session: SqlSession, positions: dict[tuple[str, int], int], now: datetime
) -> None:
    """Keep how far the relay's acknowledged messages go in each partition (``stream_offsets``
    under ``outbox-relay``), in the transaction that marks them published: a start compares
    them with the broker (``streambill/consistency.py``)."""
    for (topic, partition), offset in positions.items():
        row = await session.get(StreamOffset, (POSITIONS_CONSUMER, topic, partition))
        if row is None:
            session.add(
                StreamOffset(
                    consumer=POSITIONS_CONSUMER,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    updated_at=now,
                )
            )
        elif offset > row.offset:
            row.offset, row.updated_at = offset, now

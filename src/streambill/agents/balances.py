"""The ``balances`` agent: rates usage, applies payments, emits one ledger entry per event.

Thin by design: it batches with ``take_events``, hands raw records to
:class:`~streambill.engine.balances.BalanceEngine` and publishes the result in the two phases
that make effects exactly-once (see :mod:`streambill.engine.balances`). Records enter only
through :class:`~streambill.agents.positions.SourcePositions`: in offset order, once, and
what is committed is what was published. Tables are written
through their storage plus an explicit changelog message to the source partition, which is
what batch mode requires (a table cannot be assigned outside per-event iteration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import faust

from streambill.agents.metrics import (
    BATCH_EVENTS,
    BATCH_SECONDS,
    COMPUTE_SECONDS,
    PARKED_CUSTOMERS,
    PUBLISH_SECONDS,
    count_outputs,
)
from streambill.agents.positions import TP, SourcePositions
from streambill.agents.publisher import Publisher
from streambill.engine.balances import BalanceEngine, Outputs, Record
from streambill.settings import Settings
from streambill.streams import topics

log = logging.getLogger(__name__)


class BalancesRuntime:
    """Serializes the agent's batches and the timers' sweeps over one engine."""

    def __init__(
        self,
        engine: BalanceEngine,
        publisher: Publisher,
        positions: SourcePositions,
        *,
        depth: int = 1,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.positions = positions
        self.lock = asyncio.Lock()
        self.batches = 0
        # True while the stores are ahead of what was published (between compute and the
        # end of publish): no snapshot may be taken then.
        self.dirty = False
        # Publishes still in flight, oldest first; each waits for the one before it (see
        # :meth:`process_pipelined`). At most ``depth`` at a time.
        self.depth = depth
        self._in_flight: deque[asyncio.Future[None]] = deque()

    async def emit(self, out: Outputs) -> None:
        # States (with their outboxes) and the dedup records in one phase, then what the
        # outboxes hold. See docs/architecture.md, "Exactly-once effects".
        clock = [time.perf_counter()]

        def acknowledged(index: int) -> None:
            now = time.perf_counter()
            PUBLISH_SECONDS.labels(("state", "emit")[index]).observe(now - clock[0])
            clock[0] = now

        await self.publisher.publish_phases([[*out.dedup, *out.state], out.emit], acknowledged)
        self.engine.confirm(out.batch_no)
        count_outputs(out)

    async def drain(self) -> None:
        """Wait for every batch in flight. Call under the lock.

        A failed publish stays in place and raises again here and in every later batch:
        the next batch's states no longer carry the failed batch's outboxes (it was
        vouched for), so nothing may be published after it; the worker must stop.
        """
        while self._in_flight:
            await self._retire(self._in_flight[0])
        self.dirty = False

    async def _retire(self, publish: asyncio.Future[None]) -> None:
        """Wait for ``publish`` (the oldest in flight) and drop it; its error is raised and
        it stays. Call under the lock."""
        await publish
        if self._in_flight and self._in_flight[0] is publish:
            self._in_flight.popleft()

    def check(self) -> None:
        """Raise the error of a publish that failed while nobody was waiting for it."""
        for publish in self._in_flight:
            if not publish.done():
                return
            publish.result()

    async def process(self, records: list[Record], only: set[TP] | None = None) -> None:
        """Apply a batch and return once it is published."""
        await self.process_pipelined(records, only)
        async with self.lock:
            await self.drain()

    async def process_pipelined(self, records: list[Record], only: set[TP] | None = None) -> None:
        """Apply a batch; return while its publish is still in flight.

        Batches are computed while earlier ones are being published (a publish waits out
        broker round trips; the compute is CPU). Publishes stay strictly in order: each
        starts only once the one before it finished, and fails without publishing anything
        if that one failed. Up to ``depth`` publishes are in flight, so the loop computes
        the next batch instead of waiting for the last round trip of the one before. A
        publish error surfaces here on a later batch (or in :meth:`drain`) and stops the
        worker. ``only``: the partitions still owned once the lock is held (records of
        partitions revoked meanwhile are dropped).
        """
        async with self.lock:
            self.check()
            started = time.perf_counter()
            if only is not None:
                records = [r for r in records if (r.topic, r.partition) in only]
            records = await self.positions.admit(records)
            if not records:
                return
            self.dirty = True
            computing = time.perf_counter()
            out = self.engine.process(records, time.time())
            COMPUTE_SECONDS.observe(time.perf_counter() - computing)
            while len(self._in_flight) >= self.depth:
                await self._retire(self._in_flight[0])
            previous = self._in_flight[-1] if self._in_flight else None
            # Every batch before this one is published in order or the worker stops: its
            # states need not carry the outboxes of the batches before (see BalanceEngine).
            self.engine.vouch(out.batch_no)
            publish = asyncio.ensure_future(self._publish(previous, out, records, started))
            # A failure is raised by _retire and check; the publishes queued behind a failed
            # one fail with the same error and are never awaited: mark theirs as seen.
            publish.add_done_callback(_seen)
            self._in_flight.append(publish)

    async def _publish(
        self,
        previous: asyncio.Future[None] | None,
        out: Outputs,
        records: list[Record],
        started: float,
    ) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # its failure is this batch's: nothing is sent
        await self.emit(out)
        self.positions.mark_published(records)
        self.batches += 1
        BATCH_SECONDS.observe(time.perf_counter() - started)
        BATCH_EVENTS.observe(len(records))

    async def sweep(self, owned: set[int]) -> None:
        async with self.lock:
            await self.drain()
            self.dirty = True
            out = self.engine.sweep_parked(owned, time.time())
            if out.dedup or out.state or out.emit:
                await self.emit(out)
            self.dirty = False
            PARKED_CUSTOMERS.set(len(self.engine.parked_customers))

    async def redeliver(self, owned: set[int]) -> None:
        """After recovery: re-emit what states written before a restart still carry."""
        async with self.lock:
            await self.drain()
            self.dirty = True
            out = self.engine.redeliver_outboxes(owned, time.time())
            if out.state or out.emit:
                await self.emit(out)
                log.info("re-emitted %d outbox messages after recovery", len(out.emit))
            self.dirty = False

    async def expire_dedup(self, owned: set[int]) -> None:
        async with self.lock:
            await self.drain()
            self.dirty = True
            tombstones = self.engine.expire_dedup(owned, time.time())
            await self.publisher.publish(tombstones)
            self.dirty = False

    def forget_partitions(self, revoked: set[int]) -> None:
        """Partitions were revoked: drop the parked-customer index entries for them.

        The table data stays. Under Kafka's eager rebalancing every partition is revoked and
        most come straight back, and Faust recovers only partitions that are new to the
        worker: wiping the data here lost every state of the partitions that came back
        (seen under SIGKILL with a stale group member). Data of a partition that moved away
        is never read (its events go to the new owner), and if the partition returns,
        recovery replays the changelog from the offsets this data is complete up to.
        """
        engine = self.engine
        for cid in [c for c, p in engine.parked_customers.items() if p in revoked]:
            del engine.parked_customers[cid]
            engine.parked_since.pop(cid, None)


def _seen(publish: asyncio.Future[None]) -> None:
    if not publish.cancelled():
        publish.exception()


def register(app: faust.App, settings: Settings, runtime: BalancesRuntime) -> Any:
    source = app.topic(topics.USAGE, topics.PAYMENTS, key_serializer="raw", value_serializer="raw")
    batch_max = settings.worker_batch_max
    within = settings.worker_batch_wait_ms / 1000

    @app.agent(source, name="balances")
    async def balances(stream: Any) -> None:  # faust.Stream; StreamT lacks take_events
        async for events in stream.take_events(batch_max, within=within):
            records = [
                Record(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                )
                for e in events
            ]
            await runtime.process(records)

    return balances

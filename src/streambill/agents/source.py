"""The ``balances`` agent's records, read in batches by librdkafka instead of Faust's stream.

Faust hands every message through its fetcher, the conductor, an ``Event``, the stream and
``take_events`` before the agent sees it: in a profile of a busy worker that path took ~40%
of the process's GIL time, about as much as rating and applying the events (see
docs/performance.md). :class:`SourceReader` keeps everything Faust is good at (the consumer
group, the assignment that co-partitions the tables, table recovery, commits, timers, the
web pages) and replaces only that path: a librdkafka consumer is assigned the source
partitions Faust assigned to this worker, once their tables are recovered, at the offsets
:class:`~streambill.agents.positions.SourcePositions` resolves; it hands whole batches to
:class:`~streambill.agents.balances.BalancesRuntime`. Faust's own consumer never makes those
partitions active (see :class:`~streambill.agents.consumer.StreambillConsumer`), and it
commits the positions the runtime published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from streambill.agents.balances import BalancesRuntime
from streambill.agents.positions import TP
from streambill.engine.balances import Record

log = logging.getLogger(__name__)


class SourceReader:
    """Assign, read and hand over the source partitions this worker owns."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        runtime: BalancesRuntime,
        *,
        batch_max: int,
        batch_wait_s: float,
        fetch_wait_ms: int,
    ) -> None:
        self.runtime = runtime
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        # Assigned partitions only: this consumer never joins a group and never commits.
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{group}-source",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": fetch_wait_ms,
                "enable.partition.eof": False,
                # Prefetch a few batches per partition, not librdkafka's 100k messages.
                "queued.min.messages": 2 * batch_max,
                "queued.max.messages.kbytes": 4096,
            }
        )
        self.assigned: set[TP] = set()

    async def sync(self, owned: set[TP]) -> None:
        """Make the assignment equal ``owned``: new partitions start at their resolved
        positions. Call under the runtime's lock (no batch in flight)."""
        gone = self.assigned - owned
        if gone:
            self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in gone])
            self.assigned -= gone
        new = owned - self.assigned
        if new:
            positions = self.runtime.positions
            positions.reset(new)
            starts = [TopicPartition(t, p, await positions.start(TP(t, p))) for t, p in new]
            self._consumer.incremental_assign(starts)
            self.assigned |= new
            log.info(
                "reading %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in sorted(starts)),
            )

    async def release(self, revoked: set[TP]) -> None:
        """Partitions were revoked: stop reading them once the batch in flight is done."""
        async with self.runtime.lock:
            await self.runtime.drain()
            gone = self.assigned & revoked
            if gone:
                self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in gone])
                self.assigned -= gone

    async def seek(self, tp: TP, offset: int) -> None:
        if tp in self.assigned:
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _read(self) -> list[Record]:
        records = []
        for m in self._consumer.consume(self.batch_max, self.batch_wait_s):
            if m.error() is not None:
                log.warning("source fetch error: %s", m.error())
                continue
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))  # type: ignore[arg-type]
        return records

    async def run(self, owned: Callable[[], set[TP]], ready: Callable[[], bool]) -> None:
        """Read and process until cancelled; wait while the worker rebalances or recovers."""
        while True:
            self.runtime.check()  # a failed publish stops the reader (and the worker)
            if not ready():
                await asyncio.sleep(0.05)
                continue
            wanted = owned()
            if wanted != self.assigned:
                async with self.runtime.lock:
                    await self.runtime.drain()
                    await self.sync(wanted)
            if not self.assigned:
                await asyncio.sleep(0.05)
                continue
            records = await asyncio.to_thread(self._read)
            if records:
                await self.runtime.process_pipelined(records, only=self.assigned)

    def close(self) -> None:
        self._consumer.close()

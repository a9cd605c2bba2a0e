"""Keeps the global accounts table current on every worker by following its changelog.

Faust's GlobalTable is recovered from its changelog at start-up, but with more than one
worker its live updates do not reach every worker (measured here with two workers: 501 and
499 of 1,000 accounts, each worker knowing only what its own ``accounts`` agent wrote; a
long-standing Faust defect, robinhood/faust#541 and #716). Usage for the other half was
parked and, 90 s later, dead-lettered as ``unknown_customer``.

:class:`ChangelogFollower` takes over once recovery is complete: a librdkafka consumer
assigned to every partition of the changelog, starting right after the offsets recovery
reached, applies each record to the table's store in offset order; from then on the store
ignores Faust's own changelog batches (see :attr:`SnapshotStore.followed`), so there is one
writer per worker and no older record can overwrite a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from streambill.agents.publisher import SEAL_KEY
from streambill.agents.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class ChangelogFollower:
    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        partitions: int,
        store: SnapshotStore,
        *,
        fetch_wait_ms: int,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.store = store
        self.on_change = on_change
        self.applied = 0
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{group}-follow",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": fetch_wait_ms,
                "enable.partition.eof": False,
            }
        )
        self.started = False

    def start(self) -> None:
        """Take over from Faust: read every partition from where recovery stopped."""
        self.store.followed = True
        starts = [
            TopicPartition(self.topic, p, self.store.offsets.get(p, -1) + 1)
            for p in range(self.partitions)
        ]
        self._consumer.assign(starts)
        self.started = True
        log.info("following %s from %s", self.topic, {tp.partition: tp.offset for tp in starts})

    def apply(self, messages: list[Message]) -> int:
        data = self.store.data
        offsets = self.store.offsets
        changed = 0
        for m in messages:
            if m.error() is not None:
                log.warning("changelog fetch error: %s", m.error())
                continue
            partition, offset, key = m.partition(), m.offset(), m.key()
            if partition is None or offset is None or offset <= offsets.get(partition, -1):
                continue
            offsets[partition] = offset
            if key is None or key == SEAL_KEY:
                continue
            value = m.value()
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            changed += 1
        self.applied += changed
        if changed and self.on_change is not None:
            self.on_change(len(data))
        return changed

    async def run(self, recovered: Awaitable[Any]) -> None:
        """Start once ``recovered`` (the first table recovery) is done, then follow."""
        await recovered
        self.start()
        while True:
            messages = await asyncio.to_thread(self._consumer.consume, 5000, 0.1)
            if messages:
                self.apply(messages)

    def close(self) -> None:
        self._consumer.close()

"""The producer every agent emits through: idempotent, acks=all, awaited per batch.

Agents publish a batch and await it before they acknowledge the source offsets, so an
acknowledged event always has its outputs on the broker. librdkafka does the batching in C,
which costs a fraction of a Python-level send per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage

from streambill.engine.balances import Message
from streambill.streams import topics

log = logging.getLogger(__name__)

CHANGELOGS = frozenset(
    {topics.BALANCES_CHANGELOG, topics.DEDUP_CHANGELOG, topics.ACCOUNTS_CHANGELOG}
)
# Never a valid account or customer id (ids are printable), so it never shadows a key.
SEAL_KEY = b"\x00seal"


def seals(partitions: Iterable[tuple[str, int]]) -> list[Message]:
    """One tombstone for :data:`SEAL_KEY` per (topic, partition), in a stable order.

    The embedded broker (Tansu 0.6) reports a partition's end offset as the base offset of
    its last record batch plus one, so a reader that stops at the end offset (Faust's table
    recovery, a snapshot's bound) would miss the tail of a multi-record batch; after a
    restart on durable storage it even answers 1 until something is written. A lone record
    written after the batch makes the end offset exact. Replayed into a table it deletes a
    key no event ever has.

    Sealing is done where an end offset is read, not after every publish: an extra round
    trip per batch to the broker cost more than half the emit phase's latency (step 16 of
    docs/performance.md).

    >>> [(m.topic, m.partition, m.key, m.value) for m in seals([("t", 1), ("t", 0), ("t", 1)])]
    [('t', 0, b'\\x00seal', None), ('t', 1, b'\\x00seal', None)]
    """
    return [Message(topic, part, SEAL_KEY, None) for topic, part in sorted(set(partitions))]


# A dead letter carries the original payload as text; past this it is cut (the original stays
# addressable at its topic, partition and offset).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def producer_config(bootstrap: str, idempotence: bool = True) -> dict[str, object]:
    ordering: dict[str, object] = (
        {"enable.idempotence": True}
        # Without idempotence, one request in flight keeps each partition in order on retry.
        if idempotence
        else {"enable.idempotence": False, "max.in.flight.requests.per.connection": 1}
    )
    return {
        **ordering,
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "message.timeout.ms": 60_000,
        "partitioner": "murmur2_random",
        # Only failures call back into Python: a callback per delivered message costs the GIL.
        "delivery.report.only.error": True,
    }


class PublishError(RuntimeError):
    """A message could not be delivered; the batch must not be acknowledged."""


class Publisher:
    """Produces messages to explicit partitions and waits until the broker has them all."""

    def __init__(
        self, bootstrap: str, *, idempotence: bool = True, flush_timeout_s: float = 60.0
    ) -> None:
        self._producer = Producer(producer_config(bootstrap, idempotence))
        self._flush_timeout_s = flush_timeout_s
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: KafkaMessage) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _enqueue(self, messages: Sequence[Message]) -> None:
        produce = self._producer.produce
        for m in messages:
            while True:
                try:
                    produce(
                        m.topic,
                        m.value,
                        m.key,
                        partition=m.partition,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def _flush(self) -> None:
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            raise PublishError(f"{remaining} messages not delivered in {self._flush_timeout_s} s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise PublishError(f"{len(errors)} messages failed, first: {errors[0]}")

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send ``messages`` and return once every one is acknowledged by the broker."""
        if not messages:
            return
        self._enqueue(messages)
        await self._flush_async()

    async def publish_phases(
        self, phases: Sequence[Sequence[Message]], on_phase: Callable[[int], None] | None = None
    ) -> None:
        """Publish ``phases`` in order, each acknowledged before the next starts.
        ``on_phase(i)`` is called once phase ``i`` is acknowledged."""
        for index, messages in enumerate(phases):
            if messages:
                self._enqueue(messages)
                await self._flush_async()
            if on_phase is not None:
                on_phase(index)

    async def seal(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Make the broker's end offset of each (changelog) partition exact; see :func:`seals`.

        Call it right before reading an end offset that must bound what a partition holds,
        after the writes it must cover were acknowledged."""
        await self.publish(seals(partitions))

    async def _flush_async(self) -> None:
        try:
            await asyncio.to_thread(self._flush)
        except KafkaException as exc:
            raise PublishError(str(exc)) from exc

    def close(self) -> None:
        self._producer.flush(10)

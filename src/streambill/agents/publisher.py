"""The producer every agent emits through: idempotent, acks=all, awaited per batch.

Agents publish a batch and await it before they acknowledge the source offsets, so an
acknowledged event always has its outputs on the broker. librdkafka does the batching in C,
which costs a fraction of a Python-level send per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

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
        """Send ``messages`` and return once every one is acknowledged by the broker.

        Changelog partitions written to are then sealed: the embedded broker (Tansu 0.6)
        reports a partition's end offset as the base offset of its last record batch plus
        one, so Faust's table recovery, which reads up to that end offset, would miss the
        tail of a multi-record batch. A lone tombstone for :data:`SEAL_KEY` after the batch
        makes the reported end offset exact; applied during recovery it deletes nothing.
        """
        if not messages:
            return
        seals = {(m.topic, m.partition) for m in messages if m.topic in CHANGELOGS}
        self._enqueue(messages)
        await self._flush_async()
        if seals:
            self._enqueue([Message(t, p, SEAL_KEY, None) for t, p in sorted(seals)])
            await self._flush_async()

    async def publish_phases(
        self, phases: Sequence[Sequence[Message]], on_phase: Callable[[int], None] | None = None
    ) -> None:
        """Publish ``phases`` in order, each acknowledged before the next starts, sealing
        changelog partitions like :meth:`publish` does, with one round trip per phase (plus
        one when the last phase wrote changelogs): a phase's seals ride with the next phase's
        messages, which never touch the sealed partitions (then they go on their own).
        ``on_phase(i)`` is called once phase ``i`` is acknowledged."""
        seals: list[Message] = []
        for index, messages in enumerate(phases):
            touched = {(m.topic, m.partition) for m in messages}
            if seals and any((m.topic, m.partition) in touched for m in seals):
                self._enqueue(seals)
                await self._flush_async()
                seals = []
            batch = [*seals, *messages]
            if batch:
                self._enqueue(batch)
                await self._flush_async()
            seals = [Message(t, p, SEAL_KEY, None) for t, p in sorted(touched) if t in CHANGELOGS]
            if on_phase is not None:
                on_phase(index)
        if seals:
            self._enqueue(seals)
            await self._flush_async()

    async def publish_raw(self, messages: Sequence[Message]) -> None:
        """Send ``messages`` as they are (no seals added) and wait for every ack."""
        self._enqueue(messages)
        await self._flush_async()

    async def _flush_async(self) -> None:
        try:
            await asyncio.to_thread(self._flush)
        except KafkaException as exc:
            raise PublishError(str(exc)) from exc

    def close(self) -> None:
        self._producer.flush(10)

"""Kafka I/O for the demo and the bench: an idempotent producer and a ledger watcher."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streambill.settings import Settings

log = logging.getLogger(__name__)

# A full local queue waits for deliveries this long at most before the send fails.
QUEUE_FULL_WAIT_S: Final = 30.0
OnDelivery = Callable[[KafkaError | None, Message], None]


def producer_config(settings: Settings, *, client_id: str, linger_ms: int = 5) -> dict[str, Any]:
    """Safety first: idempotent, acks from every in-sync replica, a short linger."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "client.id": client_id,
        "enable.idempotence": settings.kafka_idempotence,
        # Without idempotence, one request in flight keeps each partition in order on retry.
        **({} if settings.kafka_idempotence else {"max.in.flight.requests.per.connection": 1}),
        "acks": "all",
        # Kafka's (Java) partitioner, as Faust and the worker place keys: with librdkafka's
        # default (crc32) 7 of 8 events land on another partition than their customer's and
        # the worker has to re-route them, one more broker round trip each.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 60_000,
    }


class Sender:
    """A confluent producer that counts failed deliveries and waits when its queue is full."""

    def __init__(self, settings: Settings, *, client_id: str, linger_ms: int = 5) -> None:
        self._producer = Producer(
            producer_config(settings, client_id=client_id, linger_ms=linger_ms)
        )
        self.delivered = 0
        self.failed = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.failed <= 10:
            log.error("delivery failed topic=%s key=%s: %s", msg.topic(), msg.key(), err)

    def send(
        self, topic: str, key: str, value: bytes, on_delivery: OnDelivery | None = None
    ) -> None:
        callback = on_delivery or self._on_delivery
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while True:
            try:
                self._producer.produce(topic, value, key.encode(), on_delivery=callback)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                self._producer.poll(0.05)

    def send_json(self, topic: str, key: str, value: dict[str, Any]) -> None:
        self.send(topic, key, orjson.dumps(value))

    def record(self, err: KafkaError | None, msg: Message) -> None:
        """The default delivery bookkeeping, for callers that wrap their own callback."""
        self._on_delivery(err, msg)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every delivery; the number still undelivered when the time is up."""
        remaining: int = self._producer.flush(timeout_s)
        if remaining:
            log.error("%d messages not delivered after %.0f s", remaining, timeout_s)
        return remaining

    def partitions(self, topic: str, timeout_s: float = 10.0) -> int:
        metadata = self._producer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise RuntimeError(f"topic {topic} not found on the broker")
        return len(found.partitions)


@dataclass(frozen=True)
class LedgerHit:
    source_event_id: str
    kind: str
    consumed_ns: int


class LedgerWatcher:
    """Reads the ledger from its end (assigned partitions, no group join) and keeps the
    entries whose ``source_event_id`` starts with this run's prefix."""

    def __init__(self, settings: Settings, topic: str, *, prefix: str, group_id: str) -> None:
        self._prefix = prefix
        self._needle = prefix.encode()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
                # Latency is measured on consumption: do not let the broker hold fetches.
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
            }
        )
        self._topic = topic
        self.partitions = end_offsets(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in self.partitions.items()])

    def poll(self, timeout_s: float, max_messages: int = 5000) -> list[LedgerHit]:
        hits: list[LedgerHit] = []
        for msg in self._consumer.consume(max_messages, timeout_s):
            if msg.error() is not None:
                log.warning("ledger consume error: %s", msg.error())
                continue
            raw = msg.value()
            if raw is None or self._needle not in raw:
                continue
            now_ns = time.monotonic_ns()
            entry = orjson.loads(raw)
            source = entry.get("source_event_id", "")
            if isinstance(source, str) and source.startswith(self._prefix):
                hits.append(LedgerHit(source, str(entry.get("kind", "")), now_ns))
        return hits

    def close(self) -> None:
        self._consumer.close()


def end_offsets(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The high watermark of every partition of ``topic``."""
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise RuntimeError(f"topic {topic} not found on the broker")
    offsets: dict[int, int] = {}
    for partition in sorted(found.partitions):
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        offsets[partition] = high
    return offsets


def usage_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """End offsets of a topic, read with a throwaway consumer."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "streambill-bench"})
    try:
        return end_offsets(consumer, topic)
    finally:
        consumer.close()


def group_lag(settings: Settings, group: str, topics: Sequence[str]) -> int | None:
    """Messages of ``topics`` the consumer ``group`` has not committed yet, or None when the
    group has committed nothing there (no such consumer runs).

    Read without joining the group. The embedded broker may report an end offset a few
    records short (the base offset of the last batch + 1), so a lag of 0 can hide the tail
    of one batch per partition; that is what "caught up" can mean here.
    """
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group})
    try:
        ends = {
            (topic, partition): high
            for topic in topics
            for partition, high in end_offsets(consumer, topic).items()
        }
        committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    finally:
        consumer.close()
    known = [tp for tp in committed if tp.offset >= 0]
    if not known:
        return None
    done = {(tp.topic, tp.partition): tp.offset for tp in known}
    return sum(max(0, high - done.get(key, 0)) for key, high in ends.items())

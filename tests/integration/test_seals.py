"""Seals make a changelog partition's end offset exact on the embedded broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from streambill.agents.publisher import SEAL_KEY, Publisher
from streambill.agents.worker import changelog_ends
from streambill.broker.testing import consumer_config, memory_broker
from streambill.engine.balances import Message
from streambill.streams.topics import TopicSpec

pytestmark = pytest.mark.integration

CHANGELOG = TopicSpec("test-balances-changelog", 2)


def read_partition(bootstrap: str, partition: int, count: int) -> list[tuple[int, bytes | None]]:
    consumer = Consumer(consumer_config(bootstrap, "test-seals"))
    consumer.assign([TopicPartition(CHANGELOG.name, partition, 0)])
    records: list[tuple[int, bytes | None]] = []
    try:
        for _ in range(60):
            for message in consumer.consume(1000, 0.5):
                offset = message.offset()
                if message.error() is None and offset is not None:
                    records.append((offset, message.key()))
            if len(records) >= count:
                break
    finally:
        consumer.close()
    return records


async def test_a_seal_lands_after_a_multi_record_batch_and_bounds_it() -> None:
    with memory_broker(specs=[CHANGELOG]) as broker:
        publisher = Publisher(broker.bootstrap)
        try:
            batch = [Message(CHANGELOG.name, 0, f"c{i}".encode(), b"{}") for i in range(50)]
            await publisher.publish(batch)
            await publisher.seal([(CHANGELOG.name, 0)])
            after = changelog_ends(broker.bootstrap, CHANGELOG.name, {0, 1})
        finally:
            publisher.close()
        records = read_partition(broker.bootstrap, 0, 51)

    # Sealed: the last record is the seal, right after the batch, and the end is exact.
    assert after == {0: 50, 1: -1}
    assert records[-1] == (50, SEAL_KEY)
    assert [offset for offset, _ in records] == list(range(51))

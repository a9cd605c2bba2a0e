"""``UsageProducer`` against a real (embedded) broker: a returned ``send`` means every record
is on the broker, on its customer's partition; no broker means ``broker_unavailable`` in time."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streambill.api.ingest import UsageProducer
from streambill.broker.process import free_port
from streambill.broker.testing import consumer_config, memory_broker
from streambill.engine.balances import partition_for
from streambill.errors import StreambillError
from streambill.settings import load_settings
from streambill.streams.topics import USAGE, TopicSpec

pytestmark = pytest.mark.integration

PARTITIONS = 8


def records(count: int, prefix: str = "e") -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(count):
        customer = f"cus_{n % 97:05d}"
        value = {"event_id": f"{prefix}-{n}", "customer_id": customer, "quantity": "1"}
        out.append((customer.encode(), orjson.dumps(value)))
    return out


def read_all(bootstrap: str, expected: int, timeout_s: float = 30.0) -> dict[bytes, set[int]]:
    """Partitions seen per key, from the start of every partition, once ``expected`` arrived."""
    consumer = Consumer(consumer_config(bootstrap, "ingest-test"))
    consumer.assign([TopicPartition(USAGE, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: dict[bytes, set[int]] = {}
    count = 0
    deadline = time.monotonic() + timeout_s
    try:
        while count < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None, msg.error()
                seen.setdefault(msg.key() or b"", set()).add(msg.partition() or 0)
                count += 1
    finally:
        consumer.close()
    assert count == expected
    return seen


async def test_send_returns_once_every_record_is_on_its_customers_partition() -> None:
    with memory_broker(specs=[TopicSpec(USAGE, PARTITIONS)]) as broker:
        producer = UsageProducer(load_settings(kafka_bootstrap=broker.bootstrap), client_id="t")
        producer.start()
        try:
            sent = records(1000)
            await producer.send(USAGE, sent, timeout_s=30)
            # several requests at once, one small enough to be a single delivery
            await asyncio.gather(
                *(producer.send(USAGE, records(50, f"c{i}"), timeout_s=30) for i in range(4)),
                producer.send_one(USAGE, b"cus_00001", b"{}", timeout_s=30),
            )
        finally:
            assert await producer.stop() == 0
        seen = read_all(broker.bootstrap, 1000 + 4 * 50 + 1)
    # the worker's partitioner (Kafka's murmur2), as streambill.loadgen.kafka places keys
    expected = {key: {partition_for(key, PARTITIONS)} for key, _ in sent}
    assert seen == expected
    assert len({p for ps in expected.values() for p in ps}) == PARTITIONS


async def test_a_full_local_queue_waits_instead_of_failing() -> None:
    with memory_broker(specs=[TopicSpec(USAGE, PARTITIONS)]) as broker:
        producer = UsageProducer(
            load_settings(kafka_bootstrap=broker.bootstrap),
            client_id="t",
            extra_config={"queue.buffering.max.messages": 20},
        )
        producer.start()
        try:
            await producer.send(USAGE, records(500), timeout_s=30)
        finally:
            await producer.stop()
        read_all(broker.bootstrap, 500)


async def test_a_stopped_broker_fails_within_the_timeout() -> None:
    with memory_broker(specs=[TopicSpec(USAGE, PARTITIONS)]) as broker:
        producer = UsageProducer(load_settings(kafka_bootstrap=broker.bootstrap), client_id="t")
        producer.start()
        await producer.send(USAGE, records(10), timeout_s=30)
    try:
        started = time.monotonic()
        with pytest.raises(StreambillError) as caught:
            await producer.send(USAGE, records(100), timeout_s=2.0)
        elapsed = time.monotonic() - started
        assert caught.value.code == "broker_unavailable"
        assert 1.9 <= elapsed < 3.0
    finally:
        await producer.stop(timeout_s=0.5)


async def test_an_unreachable_broker_fails_within_the_timeout_even_with_a_full_queue() -> None:
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    producer = UsageProducer(
        settings, client_id="t", extra_config={"queue.buffering.max.messages": 10}
    )
    producer.start()
    try:
        for count in (1, 100):  # 100 overflows the local queue: the wait is bounded too
            started = time.monotonic()
            with pytest.raises(StreambillError) as caught:
                await producer.send(USAGE, records(count), timeout_s=1.0)
            assert caught.value.code == "broker_unavailable"
            assert time.monotonic() - started < 2.0
    finally:
        await producer.stop(timeout_s=0.5)
    with pytest.raises(StreambillError) as caught:
        await producer.send_one(USAGE, b"k", b"{}", timeout_s=1.0)
    assert caught.value.code == "broker_unavailable"  # stopped

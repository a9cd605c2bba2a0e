"""The demo's and the bench's producer put each customer's events on the partition the
worker owns them on (Kafka's murmur2), so the worker never has to re-route them."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from streambill.broker.testing import memory_broker
from streambill.engine.balances import partition_for
from streambill.loadgen.kafka import Sender
from streambill.settings import load_settings
from streambill.streams.topics import USAGE, TopicSpec

PARTITIONS = 8


def test_sender_places_keys_like_the_worker() -> None:
    with memory_broker(specs=[TopicSpec(USAGE, PARTITIONS)]) as broker:
        sender = Sender(load_settings(kafka_bootstrap=broker.bootstrap), client_id="t")
        landed: dict[str, int] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            landed[(msg.key() or b"").decode()] = msg.partition() or 0

        keys = [f"cus_{i:05d}" for i in range(200)]
        for key in keys:
            sender.send(USAGE, key, b"{}", delivered)
        assert sender.flush(30) == 0

    expected = {key: partition_for(key.encode(), PARTITIONS) for key in keys}
    assert landed == expected
    # librdkafka's default partitioner would disagree on most keys: the test can fail.
    assert len(set(expected.values())) == PARTITIONS

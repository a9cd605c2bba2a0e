"""The demo's and the bench's producer put each customer's events on the partition the
worker owns them on (Kafka's murmur2), so the worker never has to re-route them."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streambill.broker.testing import memory_broker
from streambill.engine.balances import partition_for
from streambill.loadgen.kafka import Sender, group_lag
from streambill.settings import load_settings
from streambill.streams.topics import LEDGER, USAGE, TopicSpec

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


def test_group_lag_counts_what_a_group_has_not_committed() -> None:
    specs = [TopicSpec(USAGE, 2), TopicSpec(LEDGER, 2)]
    with memory_broker(specs=specs) as broker:
        settings = load_settings(kafka_bootstrap=broker.bootstrap)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        for topic, partition, count in ((USAGE, 0, 5), (USAGE, 1, 3), (LEDGER, 1, 4)):
            for n in range(count):
                producer.produce(topic, b"{}", f"k{n}".encode(), partition=partition)
                producer.flush(10)  # a batch per record: the broker's end offsets are exact
        assert group_lag(settings, "sink-under-test", (USAGE, LEDGER)) is None

        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "sink-under-test"})
        try:
            commit = [TopicPartition(USAGE, 0, 4), TopicPartition(LEDGER, 1, 4)]
            group.commit(offsets=commit, asynchronous=False)
            # Uncommitted partitions count from their start: USAGE 0 -> 1, USAGE 1 -> 3.
            assert group_lag(settings, "sink-under-test", (USAGE, LEDGER)) == 4
            rest = [TopicPartition(USAGE, 0, 5), TopicPartition(USAGE, 1, 3)]
            group.commit(offsets=rest, asynchronous=False)
        finally:
            group.close()
        assert group_lag(settings, "sink-under-test", (USAGE, LEDGER)) == 0

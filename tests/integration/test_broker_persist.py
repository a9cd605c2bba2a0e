"""Durable storage of the embedded broker: a snapshot at stop, restored into a new broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streambill.broker import persist
from streambill.broker.testing import memory_broker
from streambill.streams.topics import topic_specs

pytestmark = pytest.mark.integration
PARTITIONS = 2


def read_all(
    bootstrap: str, topic: str, partition: int
) -> list[tuple[int, bytes | None, bytes | None]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader"})
    consumer.assign([TopicPartition(topic, partition, 0)])
    out = []
    try:
        for _ in range(20):
            batch = consumer.consume(1000, 0.3)
            out += [(m.offset() or 0, m.key(), m.value()) for m in batch if m.error() is None]
            if not batch and out:
                break
    finally:
        consumer.close()
    return out


def test_snapshot_restores_records_offsets_and_group_positions(tmp_path: Path) -> None:
    specs = topic_specs(PARTITIONS)
    with memory_broker(PARTITIONS, data_dir=tmp_path / "a") as first:
        p = Producer({"bootstrap.servers": first.bootstrap, "linger.ms": 20})
        for i in range(500):
            p.produce("billing.usage.v1", b"v%d" % i, b"k%d" % (i % 7), partition=i % 2)
        p.produce("streambill-balances-changelog", None, b"gone", partition=1)  # tombstone
        assert p.flush(10) == 0
        group = Consumer({"bootstrap.servers": first.bootstrap, "group.id": "streambill"})
        group.commit(offsets=[TopicPartition("billing.usage.v1", 0, 123)], asynchronous=False)
        group.close()
        before = read_all(first.bootstrap, "billing.usage.v1", 0)
        assert persist.dump(first.bootstrap, specs, tmp_path / "snap") == 501

    with memory_broker(PARTITIONS, data_dir=tmp_path / "b") as second:
        assert persist.restore(second.bootstrap, tmp_path / "snap") == 501
        assert read_all(second.bootstrap, "billing.usage.v1", 0) == before
        tomb = read_all(second.bootstrap, "streambill-balances-changelog", 1)
        assert tomb == [(0, b"gone", None)]
        group = Consumer({"bootstrap.servers": second.bootstrap, "group.id": "streambill"})
        (committed,) = group.committed([TopicPartition("billing.usage.v1", 0)], timeout=10)
        group.close()
        assert committed.offset == 123
        with pytest.raises(persist.SnapshotError):  # not an empty broker any more
            persist.restore(second.bootstrap, tmp_path / "snap")

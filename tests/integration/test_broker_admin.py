"""ensure_topics against the real embedded broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from streambill.broker import EmbeddedBroker, TopicMismatch, ensure_topics, topic_partitions
from streambill.broker.testing import memory_broker, producer_config
from streambill.streams.topics import TopicSpec, topic_specs

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with memory_broker(specs=[]) as running:
        yield running


def test_creates_every_topic_with_its_partitions(broker: EmbeddedBroker) -> None:
    specs = topic_specs(8)
    created = ensure_topics(broker.bootstrap, specs)
    assert sorted(created) == sorted(spec.name for spec in specs)
    partitions = topic_partitions(broker.bootstrap)
    assert {spec.name: partitions[spec.name] for spec in specs} == {s.name: 8 for s in specs}


def test_is_idempotent(broker: EmbeddedBroker) -> None:
    specs = [TopicSpec("a.v1", 2), TopicSpec("b.v1", 5, {"cleanup.policy": "compact"})]
    ensure_topics(broker.bootstrap, specs)
    assert ensure_topics(broker.bootstrap, specs) == []
    assert ensure_topics(broker.bootstrap, [*specs, TopicSpec("c.v1", 1)]) == ["c.v1"]


def test_detects_a_partition_mismatch(broker: EmbeddedBroker) -> None:
    ensure_topics(broker.bootstrap, [TopicSpec("a.v1", 2)])
    with pytest.raises(TopicMismatch, match=r"a\.v1 has 2 partitions, expected 3"):
        ensure_topics(broker.bootstrap, [TopicSpec("a.v1", 3)])


def test_detects_a_topic_the_broker_created_on_first_use(broker: EmbeddedBroker) -> None:
    """Tansu auto-creates an unknown topic with 4 partitions: why topics come first."""
    producer = Producer(producer_config(broker.bootstrap))
    producer.produce("auto.v1", value=b"x")
    assert producer.flush(30) == 0
    assert topic_partitions(broker.bootstrap)["auto.v1"] == 4
    with pytest.raises(TopicMismatch, match=r"auto\.v1 has 4 partitions"):
        ensure_topics(broker.bootstrap, [TopicSpec("auto.v1", 8)])

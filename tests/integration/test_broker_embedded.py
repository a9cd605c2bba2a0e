"""The embedded broker, for real: Tansu on memory and behind its journal, started and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streambill.broker import DataDirLocked, EmbeddedBroker, PortInUse, topic_partitions
from streambill.broker.process import pid_alive
from streambill.broker.testing import (
    consumer_config,
    durable_broker,
    memory_broker,
    process_group_members,
    producer_config,
)
from streambill.streams.topics import TopicSpec

pytestmark = pytest.mark.integration

TOPIC = TopicSpec("test.events.v1", 3)


def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    producer = Producer(producer_config(bootstrap))
    for number in range(start, start + count):
        producer.produce(topic, key=f"k{number % 7}", value=json.dumps({"n": number}))
    assert producer.flush(30) == 0


def consume_all(
    bootstrap: str, topic: TopicSpec, expected: int, timeout_s: float = 30.0
) -> list[int]:
    """Read every partition from the beginning. Assigned, not subscribed: a consumer-group
    join on Tansu takes seconds (and is not what these tests are about)."""
    consumer = Consumer(consumer_config(bootstrap, f"test-{time.monotonic_ns()}"))
    consumer.assign(
        [TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in range(topic.partitions)]
    )
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            seen.append(json.loads(message.value() or b"null")["n"])
    finally:
        consumer.close()
    return seen


def wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def test_memory_broker_produces_and_consumes() -> None:
    with memory_broker(specs=[TOPIC]) as broker:
        assert topic_partitions(broker.bootstrap)[TOPIC.name] == 3
        produce(broker.bootstrap, TOPIC.name, 200)
        assert sorted(consume_all(broker.bootstrap, TOPIC, 200)) == list(range(200))


def test_durable_broker_keeps_messages_across_restart(tmp_path: Path) -> None:
    with durable_broker(tmp_path, specs=[TOPIC]) as broker:
        produce(broker.bootstrap, TOPIC.name, 100)
    assert list((tmp_path / "broker-journal").glob("*.log"))
    with durable_broker(tmp_path, specs=[TOPIC]) as broker:
        assert topic_partitions(broker.bootstrap)[TOPIC.name] == 3
        produce(broker.bootstrap, TOPIC.name, 20, start=100)
        assert sorted(consume_all(broker.bootstrap, TOPIC, 120)) == list(range(120))


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    with durable_broker(tmp_path, specs=[]) as broker:
        pids = [child.pid for child in broker.processes if child.pid is not None]
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    assert wait_dead(pids, timeout_s=0.0) == []
    assert all(process_group_members(pid) == [] for pid in pids)
    assert list((tmp_path / "run").glob("*.pid")) == []


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no cleanup at all) leaves no broker behind."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from streambill.broker import EmbeddedBroker\n"
        "from streambill.broker.process import free_port\n"
        "broker = EmbeddedBroker(Path(sys.argv[1]), port=free_port(), storage='s3')\n"
        "broker.start()\n"
        "print(' '.join(str(c.pid) for c in broker.processes), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
    assert wait_dead(pids) == []


def test_one_data_dir_one_broker(tmp_path: Path) -> None:
    with durable_broker(tmp_path, specs=[]):
        second = EmbeddedBroker(tmp_path, port=0, storage="s3")
        with pytest.raises(DataDirLocked):
            second.start()


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with memory_broker(specs=[], data_dir=tmp_path / "a") as broker:
        second = EmbeddedBroker(tmp_path / "b", port=broker.port, storage="memory")
        with pytest.raises(PortInUse):
            second.start()
        assert second.processes == []

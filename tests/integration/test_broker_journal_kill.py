"""The durable embedded broker under kills: what it acknowledged, and what anyone read, stays.

Tansu runs in memory behind the journal proxy; these tests freeze and kill both at once
(SIGSTOP, then SIGKILL: nothing runs at exit) while a producer and a consumer are busy,
start a new broker on the same data dir, and require every acknowledged record, and every
record a consumer saw, at its old offset.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from streambill.broker import EmbeddedBroker, ensure_topics
from streambill.broker.process import free_port, pid_alive
from streambill.streams.topics import TopicSpec
from waiting import eventually

pytestmark = pytest.mark.integration
TOPIC = TopicSpec("test.journal.v1", 3)
COMPACT = TopicSpec("test.journal-compact.v1", 2, {"cleanup.policy": "compact"})

Record = tuple[int, int, bytes]  # partition, offset, value


def start(data_dir: Path, port: int) -> EmbeddedBroker:
    broker = EmbeddedBroker(data_dir, port=port, storage="durable")
    broker.start()
    ensure_topics(broker.bootstrap, [TOPIC, COMPACT], timeout_s=30)
    return broker


def freeze_and_kill(broker: EmbeddedBroker) -> None:
    """Every broker process stopped at the same instant, then killed: a power loss."""
    pids = [c.pid for c in broker.processes if c.pid is not None]
    assert len(pids) == 2, "the journal proxy and Tansu"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    def dead() -> bool:
        for child in broker.processes:
            child.poll()  # reap
        return not any(pid_alive(pid) for pid in pids)

    eventually(dead, 10, "the broker's processes dead", every_s=0.01)
    broker.stop(timeout_s=1)  # releases the data dir's lock; the processes are gone


def read_all(bootstrap: str, spec: TopicSpec) -> dict[tuple[int, int], bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    ends = {}
    for p in range(spec.partitions):
        _low, high = consumer.get_watermark_offsets(TopicPartition(spec.name, p), timeout=10)
        if high > 0:
            ends[p] = high
    consumer.assign([TopicPartition(spec.name, p, 0) for p in ends])
    seen: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.2):
                if m.error() is None and m.offset() is not None:
                    seen[(m.partition() or 0, m.offset() or 0)] = m.value() or b""
            done = [
                max((o for (q, o) in seen if q == p), default=-1) >= e - 1 for p, e in ends.items()
            ]
            if all(done):
                break
    finally:
        consumer.close()
    return seen


class Traffic:
    """A producer (idempotent, acks=all) and a consumer, each on its own thread."""

    def __init__(self, bootstrap: str, round_no: int) -> None:
        self.bootstrap = bootstrap
        self.round_no = round_no
        self.acked: list[Record] = []
        self.consumed: list[Record] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _produce(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 3000,
            }
        )

        def delivered(err: object, msg: object) -> None:
            if err is None:
                self.acked.append((msg.partition(), msg.offset(), msg.value()))  # type: ignore[attr-defined]

        i = 0
        while not self._stop.is_set():
            value = b"r%d-%d" % (self.round_no, i)
            producer.produce(TOPIC.name, value, b"k%d" % (i % 17), on_delivery=delivered)
            i += 1
            if i % 50 == 0:
                producer.poll(0.001)
        producer.purge()
        producer.flush(0)

    def _consume(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"watcher-{self.round_no}",
                "enable.auto.commit": False,  # close() must not wait for a dead broker
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.assign(
            [TopicPartition(TOPIC.name, p, OFFSET_END) for p in range(TOPIC.partitions)]
        )
        try:
            while not self._stop.is_set():
                for m in consumer.consume(1000, 0.05):
                    if m.error() is None:
                        self.consumed.append(
                            (m.partition() or 0, m.offset() or 0, m.value() or b"")
                        )
        finally:
            consumer.close()


def test_every_acknowledged_and_every_read_record_survives_five_kills(tmp_path: Path) -> None:
    port = free_port()
    acked: list[Record] = []
    consumed: list[Record] = []
    rng = random.Random(19)
    for round_no in range(5):
        broker = start(tmp_path, port)
        before = len(acked)
        with Traffic(broker.bootstrap, round_no) as traffic:
            # Kill once this round's traffic is well under way, at a random moment after.
            eventually(lambda: len(traffic.acked) >= 2000, 30, "2,000 acks", every_s=0.01)
            time.sleep(rng.uniform(0.0, 0.5))  # the kill moment: random, not a wait
            freeze_and_kill(broker)
        acked += traffic.acked
        consumed += traffic.consumed
        assert len(acked) - before >= 2000, "the kill came while records were acknowledged"
        assert len(traffic.consumed) > 0, "a consumer read while the broker was killed"
        print(f"round {round_no}: {len(traffic.acked)} acknowledged, {len(traffic.consumed)} read")

    broker = start(tmp_path, port)
    try:
        log = read_all(broker.bootstrap, TOPIC)
        lost = [r for r in acked if log.get((r[0], r[1])) != r[2]]
        unseen = [r for r in consumed if log.get((r[0], r[1])) != r[2]]
        assert lost == [] and unseen == []
        assert len({r[2] for r in acked}) == len(acked)
        # The broker goes on where the journal ends, on every partition.
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        landed: list[tuple[int, int]] = []
        for p in range(TOPIC.partitions):
            producer.produce(
                TOPIC.name,
                b"after",
                partition=p,
                on_delivery=lambda e, m: landed.append((m.partition() or 0, m.offset() or 0)),
            )
        assert producer.flush(10) == 0
        for p, offset in landed:
            assert offset == max(o for (q, o) in log if q == p) + 1
    finally:
        broker.stop()


def test_group_offsets_topics_and_acks0_records_come_back(tmp_path: Path) -> None:
    port = free_port()
    broker = start(tmp_path, port)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": 0, "linger.ms": 1})
    for i in range(300):
        producer.produce(COMPACT.name, b"v%d" % i, b"k%d" % (i % 5), partition=i % 2)
    assert producer.flush(10) == 0
    # acks=0 gets no answer: wait until the broker shows them, then commit a position.
    eventually(lambda: len(read_all(broker.bootstrap, COMPACT)) == 300, 10, "300 acks=0 records")
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper"})
    group.commit(offsets=[TopicPartition(COMPACT.name, 1, 77)], asynchronous=False)
    group.close()
    before = read_all(broker.bootstrap, COMPACT)
    assert len(before) == 300
    freeze_and_kill(broker)

    broker = start(tmp_path, port)
    try:
        assert read_all(broker.bootstrap, COMPACT) == before
        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper"})
        (committed,) = group.committed([TopicPartition(COMPACT.name, 1)], timeout=10)
        group.close()
        assert committed.offset == 77
    finally:
        broker.stop()


def test_a_torn_journal_tail_loses_only_the_torn_write(tmp_path: Path) -> None:
    port = free_port()
    broker = start(tmp_path, port)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i in range(20):
        producer.produce(TOPIC.name, b"v%d" % i, partition=0)
        assert producer.flush(10) == 0  # one batch, one journal entry each
    broker.stop()
    segment = max((tmp_path / "broker-journal").glob("*.log"))
    os.truncate(segment, segment.stat().st_size - 7)  # the last write, half on disk

    broker = start(tmp_path, port)
    try:
        log = read_all(broker.bootstrap, TOPIC)
        assert sorted(log.items()) == [((0, i), b"v%d" % i) for i in range(19)]
        assert "cutting off a torn tail" in (tmp_path / "logs" / "journal.log").read_text()
        landed: list[int] = []
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(
            TOPIC.name,
            b"next",
            partition=0,
            on_delivery=lambda e, m: landed.append(m.offset() or 0),
        )
        assert producer.flush(10) == 0
        assert landed == [19]
    finally:
        broker.stop()


def test_compaction_keeps_offsets_latest_keys_and_young_records(tmp_path: Path) -> None:
    from streambill.broker.compaction import DAY_MS, Retention, compact
    from streambill.broker.journal import Journal

    port = free_port()
    broker = start(tmp_path, port)
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - 3 * DAY_MS
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i in range(40):  # 8 versions of 5 keys, the old half three days ago
        ts = old_ms if i < 20 else now_ms
        producer.produce(COMPACT.name, b"v%d" % i, b"k%d" % (i % 5), partition=0, timestamp=ts)
        producer.produce(TOPIC.name, b"u%d" % i, b"x", partition=0, timestamp=ts)
        assert producer.flush(10) == 0
    producer.produce(COMPACT.name, None, b"k0", partition=0, timestamp=now_ms)  # a young delete
    assert producer.flush(10) == 0
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper"})
    group.commit(offsets=[TopicPartition(TOPIC.name, 0, 33)], asynchronous=False)
    group.close()
    broker.stop()

    journal = Journal.open(tmp_path / "broker-journal")
    before = journal.size_bytes
    stats = compact(journal, Retention(default_ms=DAY_MS), now_ms)
    journal.close()
    assert stats.records_before == 81 and stats.records_after == 5 + 20
    assert journal.size_bytes < before
    assert [p.name[:11] for p in journal.paths()] == ["checkpoint-", "00000000000"]

    broker = start(tmp_path, port)
    try:
        compacted = read_all(broker.bootstrap, COMPACT)
        # k1..k4's latest (offsets 36..39) and k0's delete (40), at their offsets.
        assert sorted(compacted) == [(0, 36), (0, 37), (0, 38), (0, 39), (0, 40)]
        assert compacted[(0, 39)] == b"v39"
        usage = read_all(broker.bootstrap, TOPIC)
        assert sorted(usage) == [(0, o) for o in range(20, 40)]  # the young half
        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper"})
        (committed,) = group.committed([TopicPartition(TOPIC.name, 0)], timeout=10)
        group.close()
        assert committed.offset == 33
        landed: list[int] = []
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(
            TOPIC.name,
            b"next",
            partition=0,
            on_delivery=lambda e, m: landed.append(m.offset() or 0),
        )
        assert producer.flush(10) == 0
        assert landed == [40]
    finally:
        broker.stop()


def test_the_running_broker_compacts_and_a_kill_after_it_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(
        tmp_path, port=port, storage="durable", compact_mib=0.05, compact_check_s=0.2
    )
    broker.start()
    ensure_topics(broker.bootstrap, [TOPIC, COMPACT], timeout_s=30)
    acked: list[Record] = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1})

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked.append((msg.partition(), msg.offset(), msg.value()))  # type: ignore[attr-defined]

    journal_log = tmp_path / "logs" / "journal.log"
    deadline = time.monotonic() + 30
    i = 0
    while "broker journal compacted" not in journal_log.read_text():
        assert time.monotonic() < deadline, "no compaction within 30 s"
        for _ in range(200):
            producer.produce(TOPIC.name, b"c%d" % i, b"k%d" % (i % 7), on_delivery=delivered)
            i += 1
        producer.flush(10)
    for _ in range(500):  # and more after it
        producer.produce(TOPIC.name, b"c%d" % i, b"k%d" % (i % 7), on_delivery=delivered)
        i += 1
    assert producer.flush(10) == 0
    assert list((tmp_path / "broker-journal").glob("checkpoint-*.log"))
    freeze_and_kill(broker)

    broker = start(tmp_path, port)
    try:
        log = read_all(broker.bootstrap, TOPIC)
        assert [r for r in acked if log.get((r[0], r[1])) != r[2]] == []
        print(f"{len(acked)} acknowledged, all back after a compaction and a kill")
    finally:
        broker.stop()


def test_rotations_keep_producers_groups_and_offsets(tmp_path: Path) -> None:
    """The proxy swaps its data Tansu for a fresh one while an idempotent producer and a
    consumer group keep going: no record lost or moved, the group never rebalanced."""
    port = free_port()
    broker = EmbeddedBroker(
        tmp_path, port=port, storage="durable", compact_check_s=0.2, rotate_batches=100
    )
    broker.start()
    ensure_topics(broker.bootstrap, [TOPIC], timeout_s=30)
    acked: list[Record] = []
    errors: list[str] = []
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 0}
    )

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked.append((msg.partition(), msg.offset(), msg.value()))  # type: ignore[attr-defined]
        else:
            errors.append(str(err))

    assignments: list[int] = []
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "rotating",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "error_cb": lambda err: errors.append(str(err)) if err.fatal() else None,
        }
    )
    consumer.subscribe([TOPIC.name], on_assign=lambda c, ps: assignments.append(len(ps)))
    seen: dict[tuple[int, int], bytes] = {}
    journal_log = tmp_path / "logs" / "journal.log"
    deadline = time.monotonic() + 90
    i = 0
    try:
        while journal_log.read_text().count("data broker rotated") < 3:
            assert time.monotonic() < deadline, "fewer than 3 rotations in 90 s"
            for _ in range(20):
                producer.produce(TOPIC.name, b"r%d" % i, b"k%d" % (i % 11), on_delivery=delivered)
                i += 1
            producer.poll(0)
            for m in consumer.consume(500, 0.01):
                if m.error() is None:
                    seen[(m.partition() or 0, m.offset() or 0)] = m.value() or b""
        assert producer.flush(30) == 0
        end = time.monotonic() + 30
        while len(seen) < len(acked) and time.monotonic() < end:
            for m in consumer.consume(1000, 0.1):
                if m.error() is None:
                    seen[(m.partition() or 0, m.offset() or 0)] = m.value() or b""
    finally:
        consumer.close()
    rotated = journal_log.read_text().count("data broker rotated")
    print(f"{len(acked)} acknowledged through {rotated} rotations; assignments {assignments}")
    assert errors == []
    assert [r for r in acked if seen.get((r[0], r[1])) != r[2]] == []
    assert len(assignments) == 1, "the group rebalanced at a rotation"
    pauses = [int(p) for p in re.findall(r"clients paused (\d+) ms", journal_log.read_text())]
    assert len(pauses) >= 3
    freeze_and_kill(broker)
    broker = start(tmp_path, port)
    try:
        log = read_all(broker.bootstrap, TOPIC)
        assert [r for r in acked if log.get((r[0], r[1])) != r[2]] == []
    finally:
        broker.stop()

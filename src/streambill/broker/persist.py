"""Durable storage for the embedded broker: a snapshot of every topic, taken at a clean stop.

Tansu's own durable engine (``s3://`` on localbucket) keeps every write, but reads back about
one record batch per partition per fetch and waits out each fetch (measured on these
machines: 5-99 records in 10 s from a partition of 383 batches), so a worker could not keep
up with 20 events/s of demo traffic. ``durable`` storage therefore runs Tansu in memory and
``streambill up`` saves the broker when it stops, after every producer and consumer of the
stack has stopped: each partition's records (key, value, timestamp, headers) in offset
order, and the committed offsets of the stack's consumer groups. The next start produces
the records back, one partition at a time, checks that every record lands on its old offset
and commits the group offsets, so consumers and table recovery carry on where they were.

What a hard kill of ``streambill up`` loses: what was written since the last clean stop.
``STREAMBILL_BROKER_STORAGE=s3`` keeps Tansu's per-write durability for those who need it
and accept its read speed.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streambill.errors import StreambillError
from streambill.streams.topics import TopicSpec

log = logging.getLogger(__name__)
GROUPS: Final = ("streambill", "streambill-sink")
_HEADER: Final = struct.Struct("<qqii")  # offset, timestamp ms, key length, value length
_QUIET_S: Final = 0.5


class SnapshotError(StreambillError):
    code = "broker_snapshot_failed"


def _records(path: Path) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        offset, ts, klen, vlen = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        key = data[pos : pos + klen] if klen >= 0 else None
        pos += max(klen, 0)
        value = data[pos : pos + vlen] if vlen >= 0 else None
        pos += max(vlen, 0)
        yield offset, ts, key, value


def _encode(offset: int, ts: int, key: bytes | None, value: bytes | None) -> bytes:
    klen = -1 if key is None else len(key)
    vlen = -1 if value is None else len(value)
    return _HEADER.pack(offset, ts, klen, vlen) + (key or b"") + (value or b"")


def dump(bootstrap: str, specs: Sequence[TopicSpec], directory: Path) -> int:
    """Write every record of ``specs`` and the groups' offsets under ``directory``
    (atomically: a temporary directory renamed into place). Returns the record count."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "streambill-snapshot",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        total = _dump_partitions(consumer, specs, tmp)
    finally:
        consumer.close()
    (tmp / "groups").write_text(_group_offsets_text(bootstrap))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return total


def _dump_partitions(consumer: Consumer, specs: Sequence[TopicSpec], tmp: Path) -> int:
    """Read every non-empty partition at once (one partition at a time waited out a quiet
    period each: ~48 s for 72 partitions at a Ctrl-C)."""
    ends: dict[tuple[str, int], int] = {}
    for spec in specs:
        for partition in range(spec.partitions):
            tp = TopicPartition(spec.name, partition, 0)
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0:
                ends[(spec.name, partition)] = high
    chunks: dict[tuple[str, int], list[bytes]] = {tp: [] for tp in ends}
    last: dict[tuple[str, int], int] = dict.fromkeys(ends, -1)
    if ends:
        consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
        deadline = time.monotonic() + 300
        last_new = time.monotonic()
        # The reported end may be the base offset of the last batch + 1 (Tansu), so read
        # past it until every partition reached it and all stay quiet.
        while time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.05):
                offset, topic, part = msg.offset(), msg.topic(), msg.partition()
                if msg.error() is not None or offset is None or topic is None:
                    continue
                key = (topic, part or 0)
                if key not in chunks or offset <= last[key]:
                    continue
                chunks[key].append(_encode(offset, msg.timestamp()[1], msg.key(), msg.value()))
                last[key] = offset
                last_new = time.monotonic()
            reached = all(last[tp] >= high - 1 for tp, high in ends.items())
            if reached and time.monotonic() - last_new > _QUIET_S:
                break
        else:
            short = sorted(f"{t}[{p}]" for (t, p), high in ends.items() if last[(t, p)] < high - 1)
            raise SnapshotError(f"reading {', '.join(short)} did not reach the end offsets")
    for (topic, partition), records in chunks.items():
        (tmp / f"{topic}.{partition}").write_bytes(b"".join(records))
    return sum(len(records) for records in chunks.values())


def _group_offsets_text(bootstrap: str) -> str:
    lines = []
    for group in GROUPS:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            metadata = consumer.list_topics(timeout=10)
            tps = [
                TopicPartition(name, p)
                for name, topic in metadata.topics.items()
                for p in topic.partitions
            ]
            for tp in consumer.committed(tps, timeout=10):
                if tp.offset >= 0:
                    lines.append(f"{group}\t{tp.topic}\t{tp.partition}\t{tp.offset}")
        finally:
            consumer.close()
    return "\n".join(lines) + "\n"


def restore(bootstrap: str, directory: Path) -> int:
    """Produce the snapshot back into an empty broker; returns the record count."""
    if not directory.is_dir():
        return 0
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
        }
    )
    total = 0
    for path in sorted(directory.iterdir()):
        if path.name == "groups":
            continue
        topic, _, partition = path.name.rpartition(".")
        total += _restore_partition(producer, topic, int(partition), path)
    _commit_groups(bootstrap, (directory / "groups").read_text())
    return total


def _restore_partition(producer: Producer, topic: str, partition: int, path: Path) -> int:
    records = list(_records(path))
    landed: list[int] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            raise SnapshotError(f"restore of {topic}[{partition}] failed: {err}")
        landed.append(msg.offset())  # type: ignore[attr-defined]

    # The last record alone in its own request: the broker reports a partition's end as the
    # last batch's base offset + 1, which is exact only for a one-record batch.
    for _offset, ts, key, value in records[:-1]:
        producer.produce(
            topic, value, key, partition=partition, timestamp=ts, on_delivery=delivered
        )
        producer.poll(0)
    producer.flush(60)
    _offset, ts, key, value = records[-1]
    producer.produce(topic, value, key, partition=partition, timestamp=ts, on_delivery=delivered)
    if producer.flush(60):
        raise SnapshotError(f"restore of {topic}[{partition}] timed out")
    expected = [r[0] for r in records]
    if sorted(landed) != expected:
        raise SnapshotError(
            f"restore of {topic}[{partition}]: offsets differ from the snapshot "
            f"(was the broker empty?)"
        )
    return len(records)


def _commit_groups(bootstrap: str, text: str) -> None:
    by_group: dict[str, list[TopicPartition]] = {}
    for line in text.splitlines():
        if line.strip():
            group, topic, partition, offset = line.split("\t")
            by_group.setdefault(group, []).append(
                TopicPartition(topic, int(partition), int(offset))
            )
    for group, tps in by_group.items():
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        try:
            consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise SnapshotError(f"committing offsets of group {group} failed: {exc}") from exc
        finally:
            consumer.close()

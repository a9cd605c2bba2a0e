"""Retention and compaction of the broker journal: its size follows retention, not age.

The journal (:mod:`streambill.broker.journal`) would otherwise keep every record the broker
ever acknowledged, and a start would replay all of them. A compaction rolls the journal to
a new segment and rewrites everything before it (the previous checkpoint and the sealed
segments) into a new checkpoint that keeps, per partition:

- on a compacted topic (``cleanup.policy=compact``: accounts, the worker's changelogs), the
  latest record of each key; a tombstone (null value) only while it is younger than
  ``tombstone_ms`` (Kafka's ``delete.retention.ms``, 24 h), so a reader that was offline
  meanwhile still sees the delete;
- on any other topic, the records from the first one younger than the topic's
  ``retention.ms`` (or the broker's default) on; older ones are gone, as on Kafka;
- always the partition's last record, so its end offset survives (consumers and stores
  remember offsets; :mod:`streambill.consistency` compares them with the ends).

Every kept record keeps its offset (holes where records went, as on a compacted Kafka
topic); records are re-encoded into batches of up to 512 KiB, and the latest committed
offset of each group and partition and every topic are kept.

Appends go on while a compaction runs: it reads only sealed segments, and the new
checkpoint replaces them in one rename.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streambill.broker import journal as jr
from streambill.broker.journal import BatchesEntry, CommitEntry, Journal, TopicEntry
from streambill.broker.replay import RawBatch, Record, decode_records

log = logging.getLogger(__name__)

DAY_MS: Final = 24 * 3600 * 1000
_BATCH_BYTES: Final = 512 * 1024
_BATCH_RECORDS: Final = 10_000


@dataclass(frozen=True)
class Retention:
    """How long records stay (milliseconds)."""

    default_ms: int = DAY_MS  # topics without their own retention.ms
    tombstone_ms: int = DAY_MS

    def of(self, topic: TopicEntry | None) -> tuple[bool, int]:
        """(compacted, retention ms) of a topic."""
        config = topic.config if topic is not None else {}
        compacted = "compact" in config.get("cleanup.policy", "delete")
        retention = int(config.get("retention.ms", self.default_ms))
        return compacted, retention if retention >= 0 else 2**62


@dataclass
class CompactionStats:
    records_before: int = 0
    records_after: int = 0
    partitions: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)


def retained(
    records: list[Record], compacted: bool, retention_ms: int, tombstone_ms: int, now_ms: int
) -> list[Record]:
    """The records of one partition (in offset order) that the retention keeps."""
    if not records:
        return []
    last = records[-1]
    if compacted:
        latest: dict[bytes | None, int] = {}
        for index, record in enumerate(records):
            if record.key is not None:
                latest[record.key] = index
        keep = []
        for index, record in enumerate(records):
            if record.key is not None and latest[record.key] != index:
                continue  # a newer record of its key follows
            if record.value is None and record.timestamp < now_ms - tombstone_ms:
                continue  # a delete everyone had the time to see
            keep.append(record)
    else:
        cutoff = now_ms - retention_ms
        start = 0
        while start < len(records) and records[start].timestamp < cutoff:
            start += 1
        keep = records[start:]
    if not keep or keep[-1] is not last:
        keep.append(last)  # the partition's end must survive
    return keep


def encode(topic: str, partition: int, records: list[Record]) -> Iterator[bytes]:
    """Journal entries holding ``records`` at their offsets, in batches of up to 512 KiB."""
    group: list[Record] = []
    size = 0
    for record in records:
        group.append(record)
        size += len(record.key or b"") + len(record.value or b"") + 32
        if size >= _BATCH_BYTES or len(group) >= _BATCH_RECORDS:
            yield _entry(topic, partition, group)
            group, size = [], 0
    if group:
        yield _entry(topic, partition, group)


def _entry(topic: str, partition: int, group: list[Record]) -> bytes:
    base = group[0].offset
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for record in group:
        builder.append(
            record.offset - base, record.timestamp, record.key, record.value, record.headers
        )
    return jr.encode_batches(topic, partition, base, bytes(builder.build()))


def _kept_whole(topic: str, partition: int, items: list[Record | RawBatch]) -> Iterator[bytes]:
    """A partition with batches in a codec we cannot decode: kept as it is."""
    log.warning("%s[%d] holds batches we cannot decode; kept whole", topic, partition)
    for item in items:
        if isinstance(item, RawBatch):
            yield jr.encode_batches(topic, partition, item.offset, item.batch)
        else:
            yield from encode(topic, partition, [item])


@dataclass(frozen=True, slots=True)
class _Frame:
    path: Path
    position: int
    size: int


def _index(
    journal: Journal, below: int
) -> tuple[
    dict[str, TopicEntry],
    dict[tuple[str, str, int], CommitEntry],
    dict[tuple[str, int], list[_Frame]],
    int,
]:
    """One pass over the sealed journal: topics, latest commits, and where each
    partition's batches are (not the batches: those are read per partition)."""
    topics: dict[str, TopicEntry] = {}
    commits: dict[tuple[str, str, int], CommitEntry] = {}
    frames: dict[tuple[str, int], list[_Frame]] = defaultdict(list)
    total = 0
    for path in journal.paths(below):
        data = path.read_bytes()
        total += len(data)
        for position, payload in jr.frames_with_positions(data):
            kind = payload[0]
            if kind == jr.BATCHES:
                topic, partition = jr.batches_key(payload)
                frames[(topic, partition)].append(_Frame(path, position, len(payload)))
                continue
            entry = jr.decode(payload)
            if isinstance(entry, TopicEntry):
                topics[entry.name] = entry
            elif isinstance(entry, CommitEntry):
                commits[(entry.group, entry.topic, entry.partition)] = entry
    return topics, commits, frames, total


def _read(frames: list[_Frame]) -> list[BatchesEntry]:
    out = []
    handles: dict[Path, int] = {}
    try:
        for f in frames:
            fd = handles.get(f.path)
            if fd is None:
                fd = handles[f.path] = os.open(f.path, os.O_RDONLY)
            entry = jr.decode(os.pread(fd, f.size, f.position))
            assert isinstance(entry, BatchesEntry)
            out.append(entry)
    finally:
        for fd in handles.values():
            os.close(fd)
    return out


def compact(
    journal: Journal, retention: Retention, now_ms: int | None = None, *, below: int | None = None
) -> CompactionStats:
    """Rewrite the sealed part of ``journal`` (segments below ``below``; rolled now when
    not given) into a new checkpoint that keeps what ``retention`` keeps."""
    started = time.monotonic()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if below is None:
        below = journal.roll()
    topics, commits, frames, total = _index(journal, below)
    stats = CompactionStats(bytes_before=total, partitions=len(frames))

    def payloads() -> Iterator[bytes]:
        for spec in topics.values():
            yield jr.encode_topic(spec.name, spec.partitions, spec.config)
        for (topic, partition), where in sorted(frames.items()):
            items = list(decode_records(_read(where)))
            records = [r for r in items if isinstance(r, Record)]
            if len(records) != len(items):
                yield from _kept_whole(topic, partition, items)
                continue
            compacted, retention_ms = retention.of(topics.get(topic))
            keep = retained(records, compacted, retention_ms, retention.tombstone_ms, now)
            stats.records_before += len(records)
            stats.records_after += len(keep)
            if len(keep) < len(records):
                stats.dropped[topic] = stats.dropped.get(topic, 0) + len(records) - len(keep)
            yield from encode(topic, partition, keep)
        for c in commits.values():
            yield jr.encode_commit(c.group, c.topic, c.partition, c.offset, c.metadata)

    stats.bytes_after = journal.install_checkpoint(below, payloads())
    stats.seconds = time.monotonic() - started
    log.info(
        "broker journal compacted: %d -> %d records, %.1f -> %.1f MiB in %.1f s",
        stats.records_before,
        stats.records_after,
        stats.bytes_before / 2**20,
        stats.bytes_after / 2**20,
        stats.seconds,
    )
    return stats

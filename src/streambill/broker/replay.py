"""Replay the broker journal into an empty Tansu, every record on its old offset.

Consumers remember offsets (committed positions, the worker's per-source offsets, model and
commission checkpoints), so a restored partition must hold each record at exactly the
offset it had. Tansu assigns a batch the partition's end as its base offset and honours the
batch's ``lastOffsetDelta``, and clients read batches with holes in their offsets (as on a
compacted Kafka topic), so the replay re-encodes each partition's records into big batches
with the original offsets as deltas: holes (offsets whose produce never reached the journal)
stay holes, and a partition of many small batches (demo traffic) comes back as few big ones,
which Tansu's memory engine reads much faster.

Two rules of Tansu shape the last batches: it reports a partition's end as the base offset
of its last batch + 1, so each partition's last record goes alone into its own batch, and
any hole just before it is covered by stretching the batch before (``lastOffsetDelta``).

Batches are re-encoded without producer ids (Tansu refuses an id it did not issue, with
UNKNOWN_PRODUCER_ID). Control batches (transaction markers) are dropped: the stack does not
use transactions. A batch compressed with a codec this interpreter cannot decode is kept as
it is, which works as long as no hole precedes it.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from streambill.broker import wire
from streambill.broker.errors import BrokerError
from streambill.broker.journal import BatchesEntry, CommitEntry, Journal, TopicEntry

log = logging.getLogger(__name__)

_BATCH_BYTES: Final = 512 * 1024
_BATCH_RECORDS: Final = 10_000
_IN_FLIGHT: Final = 16
_DEFAULT_PARTITIONS: Final = 4  # what Tansu gives a topic it creates on first use
_SIZE: Final = struct.Struct(">i")
_CLIENT: Final = "streambill-replay"
_TOPIC_ALREADY_EXISTS: Final = 36


class ReplayError(BrokerError):
    code = "broker_replay_failed"


@dataclass
class Restored:
    records: int = 0
    commits: int = 0
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    topics: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class RawBatch:
    """A batch kept as it was (a codec we cannot decode)."""

    offset: int  # its base offset in the old log
    last_offset: int
    batch: bytes


def replay(
    journal: Journal,
    upstream: str,
    timeout_s: float = 60.0,
    *,
    below: int | None = None,
    start: int | None = None,
    ends: dict[tuple[str, int], int] | None = None,
    coordinator: str | None = None,
    commits: bool = True,
) -> Restored:
    """Restore topics, records and committed offsets from ``journal`` into ``upstream``.

    ``below``/``start`` pick the journal's part (:meth:`Journal.entries`); ``ends`` are the
    partitions' ends in ``upstream`` already (a second replay continues where the first
    stopped). Committed offsets go to ``coordinator`` (the groups' Tansu) when given, else to
    ``upstream``, and topics to both."""
    started = time.monotonic()
    topics: dict[str, TopicEntry] = {}
    partitions: dict[tuple[str, int], list[BatchesEntry]] = defaultdict(list)
    offsets: dict[tuple[str, str, int], CommitEntry] = {}
    for entry in journal.entries(below, start):
        if isinstance(entry, BatchesEntry):
            partitions[(entry.topic, entry.partition)].append(entry)
        elif isinstance(entry, CommitEntry):
            offsets[(entry.group, entry.topic, entry.partition)] = entry
        else:
            topics[entry.name] = entry
    restored = Restored(ends=dict(ends or {}))
    if not topics and not partitions and not offsets:
        return restored
    # Raw requests only: Tansu advertises the proxy's address, which listens after this.
    with _Connection(upstream, timeout_s) as connection:
        _create_topics(connection, topics, partitions)
        for (topic, partition), entries in sorted(partitions.items()):
            at = restored.ends.get((topic, partition), 0)
            count, end = _replay_partition(connection, topic, partition, entries, at)
            restored.records += count
            restored.ends[(topic, partition)] = end
        if commits and coordinator is None:
            restored.commits = _commit(connection, offsets.values())
    restored.topics = set(topics) | {topic for topic, _p in partitions}
    if coordinator is not None:
        with _Connection(coordinator, timeout_s) as connection:
            _create_topics(connection, topics, partitions)
            if commits:
                restored.commits = _commit(connection, offsets.values())
    log.info(
        "replayed %d records of %d partitions and %d offsets in %.1f s",
        restored.records,
        len(partitions),
        restored.commits,
        time.monotonic() - started,
    )
    return restored


def _create_topics(
    connection: _Connection,
    topics: dict[str, TopicEntry],
    partitions: dict[tuple[str, int], list[BatchesEntry]],
) -> None:
    wanted = {t.name: wire.NewTopicRequest(t.name, t.partitions, t.config) for t in topics.values()}
    highest: dict[str, int] = defaultdict(int)
    for topic, partition in partitions:
        highest[topic] = max(highest[topic], partition + 1)
    for topic, count in highest.items():
        if topic not in wanted:  # created by Tansu on first use
            wanted[topic] = wire.NewTopicRequest(topic, max(_DEFAULT_PARTITIONS, count), {})
        elif wanted[topic].partitions < count:
            raise ReplayError(f"the journal holds {topic}[{count - 1}] beyond its partitions")
    frame = wire.create_topics_frame(connection.next_id(), _CLIENT, list(wanted.values()))
    response = connection.call(frame)
    for name, error_code in wire.create_topics_response(response, 4).items():
        if error_code not in (0, _TOPIC_ALREADY_EXISTS):
            raise ReplayError(f"creating topic {name} failed with Kafka error {error_code}")


def decode_records(entries: list[BatchesEntry]) -> Iterator[Record | RawBatch]:
    """The partition's records in offset order, each with its absolute offset."""
    last = -1
    for entry in sorted(entries, key=lambda e: e.base_offset):
        base = entry.base_offset
        for header, raw in wire.batches(entry.records):
            span = header.last_offset_delta + 1
            if base + span - 1 <= last:  # already replayed (an overlapping entry)
                base += span
                continue
            if header.is_control:
                base += span
                continue
            try:
                batch = DefaultRecordBatch(bytes(raw))
                decoded = [
                    Record(base + rec.offset, rec.timestamp, rec.key, rec.value, rec.headers)
                    for rec in batch
                ]
            except Exception as exc:  # an unsupported codec
                if base <= last:
                    raise ReplayError(f"cannot decode a batch that overlaps: {exc}") from exc
                yield RawBatch(base, base + span - 1, bytes(raw))
                last = base + span - 1
                base += span
                continue
            for record in decoded:
                if record.offset > last:
                    yield record
                    last = record.offset
            base += span


def _replay_partition(
    connection: _Connection,
    topic: str,
    partition: int,
    entries: list[BatchesEntry],
    at: int = 0,
) -> tuple[int, int]:
    """Produce the partition back onto its end ``at``; returns (record count, new end)."""
    items = [i for i in decode_records(entries) if i.offset >= at]
    if not items:
        return 0, at
    end = at  # the partition's end in Tansu as the replay proceeds
    count = 0
    pending: list[Record] = []
    size = 0
    expected: list[tuple[int, int]] = []  # (base, next end) per request, to verify

    def flush(stretch_to: int | None = None) -> None:
        nonlocal end, pending, size
        if not pending and stretch_to is None:
            return
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
        for record in pending:
            builder.append(
                record.offset - end, record.timestamp, record.key, record.value, record.headers
            )
        last = pending[-1].offset if pending else end - 1
        batch = bytes(builder.build())
        if stretch_to is not None and stretch_to > last:
            batch = _stretch(batch, stretch_to - end)
            last = stretch_to
        elif not pending:
            batch = b""
        if batch:
            expected.append((end, last + 1))
            connection.send(topic, partition, batch)
            end = last + 1
        pending = []
        size = 0

    final = items[-1]
    for item in items:
        if isinstance(item, RawBatch):
            flush(stretch_to=item.offset - 1 if item.offset > end else None)
            if item.offset != end:
                raise ReplayError(f"{topic}[{partition}]: a kept batch at {item.offset}, end {end}")
            expected.append((end, item.last_offset + 1))
            connection.send(topic, partition, item.batch)
            end = item.last_offset + 1
            count += 1
            continue
        if item is final:
            # Alone in the last batch, with no hole before it (Tansu's end offset rule).
            if pending or item.offset > end:
                flush(stretch_to=item.offset - 1)
            pending = [item]
            flush()
            count += 1
            break
        pending.append(item)
        size += len(item.value or b"") + len(item.key or b"") + 32
        count += 1
        if size >= _BATCH_BYTES or len(pending) >= _BATCH_RECORDS:
            flush()
    bases = connection.results(topic, partition, len(expected))
    for (want, _next), got in zip(expected, bases, strict=True):
        if want != got:
            raise ReplayError(
                f"{topic}[{partition}]: a replayed batch landed at {got}, not {want} "
                f"(was the broker empty?)"
            )
    return count, end


def _stretch(batch: bytes, last_offset_delta: int) -> bytes:
    """The batch covering offsets up to base + ``last_offset_delta`` (a hole after it)."""
    out = bytearray(batch)
    struct.pack_into(">i", out, 23, last_offset_delta)
    return wire.rewrite_batch(out)


def _commit(connection: _Connection, commits: Iterable[CommitEntry]) -> int:
    by_group: dict[str, list[wire.CommittedOffset]] = defaultdict(list)
    for c in commits:
        by_group[c.group].append(
            wire.CommittedOffset(c.group, c.topic, c.partition, c.offset, c.metadata)
        )
    total = 0
    for group, offsets in by_group.items():
        frame = wire.offset_commit_frame(connection.next_id(), _CLIENT, group, offsets)
        errors = wire.offset_commit_response(connection.call(frame), 2)
        failed = {tp: code for tp, code in errors.items() if code != 0}
        if failed:
            raise ReplayError(f"restoring the offsets of group {group} failed: {failed}")
        total += len(offsets)
    return total


class _Connection:
    """One raw connection to Tansu that pipelines Produce requests."""

    def __init__(self, upstream: str, timeout_s: float) -> None:
        host, _, port = upstream.rpartition(":")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = socket.create_connection((host, int(port)), timeout=timeout_s)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ReplayError(f"the broker at {upstream} does not answer: {exc}") from exc
                time.sleep(0.05)
        self._correlation = 0
        self._sent: list[tuple[int, str, int]] = []
        self._results: dict[int, int] = {}

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def next_id(self) -> int:
        self._correlation += 1
        return self._correlation

    def call(self, frame: bytes) -> bytes:
        """Send one request and return its response (no produce may be outstanding)."""
        if len(self._results) != len(self._sent):
            raise ReplayError("a request while produces are outstanding")
        self._sock.sendall(_SIZE.pack(len(frame)) + frame)
        return self._exactly(_SIZE.unpack(self._exactly(4))[0])

    def send(self, topic: str, partition: int, batch: bytes) -> None:
        self._correlation += 1
        frame = wire.produce_frame(self._correlation, _CLIENT, topic, partition, batch)
        self._sock.sendall(_SIZE.pack(len(frame)) + frame)
        self._sent.append((self._correlation, topic, partition))
        if len(self._sent) - len(self._results) >= _IN_FLIGHT:
            self._receive_one()

    def results(self, topic: str, partition: int, count: int) -> list[int]:
        """Base offsets of the last ``count`` requests (all of one partition)."""
        while len(self._results) < len(self._sent):
            self._receive_one()
        ids = [c for c, _t, _p in self._sent[-count:]] if count else []
        return [self._results[c] for c in ids]

    def _receive_one(self) -> None:
        size = _SIZE.unpack(self._exactly(4))[0]
        frame = self._exactly(size)
        correlation = _SIZE.unpack_from(frame, 0)[0]
        sent = self._sent[len(self._results)]
        if sent[0] != correlation:
            raise ReplayError(f"response {correlation} for request {sent[0]}")
        (result,) = wire.produce_response(frame, 7)
        if result.error_code != 0:
            raise ReplayError(
                f"replaying {sent[1]}[{sent[2]}] failed with Kafka error {result.error_code}"
            )
        self._results[correlation] = result.base_offset

    def _exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = self._sock.recv(min(size, 1 << 20))
            if not chunk:
                raise ReplayError("the broker closed the connection during the replay")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

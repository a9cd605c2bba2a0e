"""The broker's write-ahead journal: what the embedded broker acknowledged, on disk first.

Tansu's memory engine keeps everything in RAM, so the embedded stack's durability lives
here. The journal proxy (:mod:`streambill.broker.proxy`) appends an entry for every record
batch the broker accepted, every committed consumer offset and every topic, and answers the
client only after the entry is written and ``fdatasync``-ed. A start replays the journal
into a fresh broker (:mod:`streambill.broker.replay`).

On disk: ``<dir>/<first entry number, 20 digits>.log`` segments, each a run of frames::

    u32 payload length | u32 CRC-32C of the payload | payload

A payload is one entry (see :func:`encode_batches`, :func:`encode_commit`,
:func:`encode_topic`). Appends only ever extend the newest segment, and each append is
synced before anything it covers is acknowledged, so a crash can only leave a *torn tail*:
a partial frame, or a frame whose CRC does not match, at the end of the newest segment.
:meth:`Journal.open` cuts such a tail off (it was never acknowledged) and keeps every
earlier entry. A bad frame anywhere else is corruption, not a torn write, and stops the
start with :class:`JournalCorrupt` naming the file and position.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiokafka.record.util import calc_crc32c

from streambill.broker.errors import BrokerError
from streambill.broker.wire import Reader, WireError, enc_bytes, enc_string, i32, i64

log = logging.getLogger(__name__)

_FRAME: Final = struct.Struct(">II")
SEGMENT_BYTES: Final = 64 * 1024 * 1024
_MAX_ENTRY: Final = 256 * 1024 * 1024

BATCHES: Final = 1
COMMIT: Final = 2
TOPIC: Final = 3
TRAILER: Final = 4  # the last entry of a complete checkpoint: how many came before it


class JournalCorrupt(BrokerError):
    """A journal entry other than the newest one does not read back."""

    code = "broker_journal_corrupt"


@dataclass(frozen=True, slots=True)
class BatchesEntry:
    topic: str
    partition: int
    base_offset: int  # where the broker put the first batch
    records: bytes  # the record batches as the client sent them


@dataclass(frozen=True, slots=True)
class CommitEntry:
    group: str
    topic: str
    partition: int
    offset: int
    metadata: str | None


@dataclass(frozen=True, slots=True)
class TopicEntry:
    name: str
    partitions: int
    config: dict[str, str]


Entry = BatchesEntry | CommitEntry | TopicEntry


def encode_batches(topic: str, partition: int, base_offset: int, records: bytes) -> bytes:
    return b"".join(
        (bytes((BATCHES,)), enc_string(topic), i32(partition), i64(base_offset), enc_bytes(records))
    )


def encode_commit(
    group: str, topic: str, partition: int, offset: int, metadata: str | None
) -> bytes:
    return b"".join(
        (
            bytes((COMMIT,)),
            enc_string(group),
            enc_string(topic),
            i32(partition),
            i64(offset),
            enc_string(metadata),
        )
    )


def encode_topic(name: str, partitions: int, config: dict[str, str]) -> bytes:
    raw = json.dumps(config, sort_keys=True)
    return b"".join((bytes((TOPIC,)), enc_string(name), i32(partitions), enc_string(raw)))


def encode_trailer(count: int) -> bytes:
    return bytes((TRAILER,)) + i64(count)


def decode(payload: bytes | memoryview) -> Entry | None:
    """The entry (None for a checkpoint's trailer)."""
    r = Reader(payload)
    kind = r.i8()
    if kind == TRAILER:
        return None
    if kind == BATCHES:
        topic, partition, base = r.string(), r.i32(), r.i64()
        records = r.nullable_bytes()
        return BatchesEntry(topic, partition, base, bytes(records or b""))
    if kind == COMMIT:
        group, topic, partition, offset = r.string(), r.string(), r.i32(), r.i64()
        return CommitEntry(group, topic, partition, offset, r.nullable_string())
    if kind == TOPIC:
        name, partitions = r.string(), r.i32()
        return TopicEntry(name, partitions, json.loads(r.string()))
    raise WireError(f"unknown journal entry kind {kind}")


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), calc_crc32c(payload)) + payload


def frames_with_positions(data: bytes) -> Iterator[tuple[int, memoryview]]:
    """(where the payload starts, payload) of each whole frame of a read-back file."""
    view = memoryview(data)
    pos = 0
    while pos + _FRAME.size <= len(view):
        size, crc = _FRAME.unpack_from(view, pos)
        end = pos + _FRAME.size + size
        if size > _MAX_ENTRY or end > len(view):
            return
        payload = view[pos + _FRAME.size : end]
        if calc_crc32c(payload) != crc:
            return
        yield pos + _FRAME.size, payload
        pos = end


def batches_key(payload: bytes | memoryview) -> tuple[str, int]:
    """(topic, partition) of a batches entry, without copying its records."""
    r = Reader(payload, 1)
    return r.string(), r.i32()


def _read_frames(data: bytes) -> tuple[list[memoryview], int]:
    """The whole frames at the start of ``data`` and where the first bad one starts."""
    frames = []
    good = 0
    for position, payload in frames_with_positions(data):
        frames.append(payload)
        good = position + len(payload)
    return frames, good


class Journal:
    """Append-only, synced, segmented, with a compacted checkpoint in front.

    Segments are numbered from 1 (``<number, 20 digits>.log``). A checkpoint
    ``checkpoint-<N>.log`` stands for every segment numbered below ``N`` (compacted: see
    :mod:`streambill.broker.compaction`); it ends with a trailer entry, and one without it
    (a compaction killed while writing) is ignored and removed. Reading goes checkpoint
    first, then the segments from ``N`` on. Appends go to the newest segment, from one thread
    at a time (the proxy's journal thread); :meth:`roll` and :meth:`install_checkpoint` may
    run on another.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> j = Journal.open(d)
    >>> j.append([encode_commit("g", "t", 0, 5, None)])
    >>> j.close()
    >>> [e.offset for e in Journal.open(d).entries()]
    [5]
    """

    def __init__(
        self,
        directory: Path,
        segments: list[Path],
        checkpoint: Path | None,
        truncated_bytes: int,
    ) -> None:
        self.directory = directory
        self.truncated_bytes = truncated_bytes
        self._segments = segments
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self.appended_entries = 0
        self.synced_bytes = 0

    @classmethod
    def open(cls, directory: Path) -> Journal:
        """Open (creating) the journal, cutting off a torn tail of the newest segment."""
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink()  # a half-written checkpoint of a killed run
        checkpoint = _newest_checkpoint(directory)
        covered = _number(checkpoint) if checkpoint is not None else 0
        segments = []
        for path in sorted(directory.glob("[0-9]*.log")):
            if _number(path) < covered:
                path.unlink()  # compacted into the checkpoint; its removal was interrupted
            else:
                segments.append(path)
        truncated = 0
        for index, path in enumerate(segments):
            data = path.read_bytes()
            _frames, good = _read_frames(data)
            if good == len(data):
                continue
            if index != len(segments) - 1:
                raise JournalCorrupt(
                    f"the broker journal {path} has a bad entry at byte {good} of {len(data)} "
                    f"and newer segments follow it: this is damage, not an interrupted write. "
                    f"Restore the data dir from a backup (or move {directory} away to start "
                    f"with an empty broker, losing its data)."
                )
            truncated = len(data) - good
            log.warning(
                "broker journal %s: cutting off a torn tail of %d bytes at byte %d "
                "(an interrupted write, never acknowledged)",
                path,
                truncated,
                good,
            )
            with path.open("r+b") as file:
                file.truncate(good)
                file.flush()
                os.fsync(file.fileno())
        journal = cls(directory, segments, checkpoint, truncated)
        journal._open_tail(max(covered, 1))
        return journal

    def _open_tail(self, first_number: int) -> None:
        if not self._segments:
            self._new_segment(first_number)
            return
        path = self._segments[-1]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    def _new_segment(self, number: int) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{number:020d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with self._lock:
            self._segments.append(path)
        self._size = 0
        _sync_dir(self.directory)  # the new file's name must survive a crash too

    def append(self, payloads: list[bytes]) -> None:
        """Write the entries and ``fdatasync`` them: once this returns they are durable."""
        if not payloads:
            return
        if self._size >= SEGMENT_BYTES:
            self.roll()
        data = b"".join(frame(p) for p in payloads)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fdatasync(self._fd)
        self._size += len(data)
        self.appended_entries += len(payloads)
        self.synced_bytes += len(data)

    def roll(self) -> int:
        """Start a new segment (on the appending thread); returns its number. Everything
        appended before it is in the segments below that number."""
        with self._lock:
            number = _number(self._segments[-1]) + 1
        self._new_segment(number)
        return number

    def entries(self, below: int | None = None, start: int | None = None) -> Iterator[Entry]:
        """Every entry, oldest first: the checkpoint's, then the segments' (only those
        numbered below ``below`` when given; from segment ``start`` on, without the
        checkpoint, when given)."""
        for path in self.paths(below):
            if start is not None and (not path.name[0].isdigit() or _number(path) < start):
                continue
            frames, _good = _read_frames(path.read_bytes())
            for payload in frames:
                entry = decode(payload)
                if entry is not None:
                    yield entry

    def paths(self, below: int | None = None) -> list[Path]:
        with self._lock:
            segments = [p for p in self._segments if below is None or _number(p) < below]
            checkpoint = self._checkpoint
        return ([checkpoint] if checkpoint is not None else []) + segments

    def install_checkpoint(self, number: int, payloads: Iterable[bytes]) -> int:
        """Write ``payloads`` as the checkpoint standing for the segments below ``number``,
        then remove those segments and the previous checkpoint. Returns its size in bytes.
        A crash at any point leaves either the old or the new checkpoint in force."""
        final = self.directory / f"checkpoint-{number:020d}.log"
        tmp = final.with_suffix(".tmp")
        count = size = 0
        with tmp.open("wb") as file:
            for payload in payloads:
                data = frame(payload)
                file.write(data)
                count += 1
                size += len(data)
            file.write(frame(encode_trailer(count)))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, final)
        _sync_dir(self.directory)
        with self._lock:
            old, self._checkpoint = self._checkpoint, final
            gone = [p for p in self._segments if _number(p) < number]
            self._segments = [p for p in self._segments if _number(p) >= number]
        for path in [*gone, *([old] if old is not None and old != final else [])]:
            path.unlink(missing_ok=True)
        _sync_dir(self.directory)
        return size

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths() if p.exists())

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _number(path: Path) -> int:
    return int(path.stem.rpartition("-")[2])


def _newest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint; incomplete and older ones are removed."""
    found = None
    for path in sorted(directory.glob("checkpoint-*.log"), reverse=True):
        if found is None and _complete(path):
            found = path
        else:
            log.warning("broker journal: removing %s (superseded or incomplete)", path)
            path.unlink()
    return found


def _complete(path: Path) -> bool:
    frames, good = _read_frames(path.read_bytes())
    if not frames or good != path.stat().st_size:
        return False
    r = Reader(frames[-1])
    return r.i8() == TRAILER and r.i64() == len(frames) - 1


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The few parts of Kafka's wire protocol that the broker's journal must read and write.

The journal (:mod:`streambill.broker.journal`) stands between Kafka clients and Tansu. It
passes every request through untouched, but must know what a Produce or OffsetCommit
request carried and what the broker answered, and it replays record batches into a fresh
broker. This module decodes exactly those messages, in every version a client may
negotiate (flexible versions included), and builds the requests the replay sends.

Nothing here allocates per record: a Produce request's record batches stay the bytes the
client sent; only their 61-byte headers are read (:class:`BatchHeader`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiokafka.record.util import calc_crc32c

PRODUCE: Final = 0
FETCH: Final = 1
LIST_OFFSETS: Final = 2
METADATA: Final = 3
OFFSET_COMMIT: Final = 8
OFFSET_FETCH: Final = 9
API_VERSIONS: Final = 18
CREATE_TOPICS: Final = 19
DELETE_RECORDS: Final = 21
INIT_PRODUCER_ID: Final = 22

# First flexible (compact, tagged) version of each API we decode.
_FLEXIBLE_FROM: Final = {
    PRODUCE: 9,
    FETCH: 12,
    OFFSET_COMMIT: 8,
    METADATA: 9,
    API_VERSIONS: 3,
    CREATE_TOPICS: 5,
    LIST_OFFSETS: 6,
}

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


class WireError(ValueError):
    """A message that does not decode as the protocol says."""


def flexible(api_key: int, version: int) -> bool:
    """Whether ``version`` of ``api_key`` uses compact encodings and tagged fields."""
    return version >= _FLEXIBLE_FROM.get(api_key, 1 << 15)


class Reader:
    """A cursor over one message.

    >>> r = Reader(b"\\x00\\x03abc\\x05")
    >>> r.string(), r.uvarint()
    ('abc', 5)
    """

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.buf = memoryview(buf)
        self.pos = pos

    def _take(self, size: int) -> memoryview:
        end = self.pos + size
        if size < 0 or end > len(self.buf):
            raise WireError(f"message ends at {len(self.buf)}, wanted {end}")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def i8(self) -> int:
        return int(_I8.unpack(self._take(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack(self._take(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self._take(8))[0])

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise WireError("varint longer than 10 bytes")

    def varint(self) -> int:
        raw = self.uvarint()
        return (raw >> 1) ^ -(raw & 1)

    def nullable_string(self, compact: bool = False) -> str | None:
        size = self.uvarint() - 1 if compact else self.i16()
        if size < 0:
            return None
        return bytes(self._take(size)).decode()

    def string(self, compact: bool = False) -> str:
        value = self.nullable_string(compact)
        if value is None:
            raise WireError("null where a string is required")
        return value

    def nullable_bytes(self, compact: bool = False) -> memoryview | None:
        size = self.uvarint() - 1 if compact else self.i32()
        if size < 0:
            return None
        return self._take(size)

    def array_len(self, compact: bool = False) -> int:
        """Element count; 0 for a null array."""
        size = self.uvarint() - 1 if compact else self.i32()
        return max(size, 0)

    def skip_tags(self, compact: bool) -> None:
        if not compact:
            return
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())

    def skip(self, size: int) -> None:
        self._take(size)


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value: int) -> bytes:
    return uvarint((value << 1) ^ (value >> 63))


def enc_string(value: str | None, compact: bool = False) -> bytes:
    if value is None:
        return uvarint(0) if compact else _I16.pack(-1)
    raw = value.encode()
    return (uvarint(len(raw) + 1) if compact else _I16.pack(len(raw))) + raw


def enc_bytes(value: bytes | None, compact: bool = False) -> bytes:
    if value is None:
        return uvarint(0) if compact else _I32.pack(-1)
    return (uvarint(len(value) + 1) if compact else _I32.pack(len(value))) + value


def enc_array_len(count: int, compact: bool = False) -> bytes:
    return uvarint(count + 1) if compact else _I32.pack(count)


def i16(value: int) -> bytes:
    return _I16.pack(value)


def i32(value: int) -> bytes:
    return _I32.pack(value)


def i64(value: int) -> bytes:
    return _I64.pack(value)


# --- request and response headers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_at: int  # where the request body starts in the frame


def request_header(frame: bytes | bytearray | memoryview) -> RequestHeader:
    """Decode a request's header (v1, or v2 with tagged fields for flexible versions)."""
    r = Reader(frame)
    api_key, api_version, correlation_id = r.i16(), r.i16(), r.i32()
    client_id = r.nullable_string()  # never compact, even in header v2
    if flexible(api_key, api_version) or (api_key == API_VERSIONS and api_version >= 3):
        r.skip_tags(True)
    return RequestHeader(api_key, api_version, correlation_id, client_id, r.pos)


def response_body_at(api_key: int, api_version: int) -> int:
    """Where a response body starts: after the correlation id, and for flexible versions
    (except ApiVersions, whose response header is always v0) after the tag section."""
    if api_key != API_VERSIONS and flexible(api_key, api_version):
        return -1  # variable: a tag section follows; see response_reader
    return 4


def response_reader(frame: bytes | memoryview, api_key: int, api_version: int) -> Reader:
    r = Reader(frame, 4)
    if api_key != API_VERSIONS and flexible(api_key, api_version):
        r.skip_tags(True)
    return r


# --- Produce ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProducedPartition:
    topic: str
    partition: int
    records: bytes  # one or more record batches, as sent
    at: int = 0  # where ``records`` starts in the request frame


@dataclass(frozen=True, slots=True)
class ProduceRequest:
    acks: int
    transactional_id: str | None
    partitions: list[ProducedPartition]


def produce_request(frame: bytes | memoryview, header: RequestHeader) -> ProduceRequest:
    compact = flexible(PRODUCE, header.api_version)
    r = Reader(frame, header.body_at)
    txn = r.nullable_string(compact) if header.api_version >= 3 else None
    acks = r.i16()
    r.i32()  # timeout
    partitions = []
    for _ in range(r.array_len(compact)):
        topic = r.string(compact)
        for _ in range(r.array_len(compact)):
            index = r.i32()
            size = r.uvarint() - 1 if compact else r.i32()
            at = r.pos
            records = bytes(r.buf[at : at + size]) if size > 0 else b""
            r.skip(max(size, 0))
            r.skip_tags(compact)
            if records:
                partitions.append(ProducedPartition(topic, index, records, at))
        r.skip_tags(compact)
    return ProduceRequest(acks, txn, partitions)


@dataclass(frozen=True, slots=True)
class ProduceResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int


def produce_response(frame: bytes | memoryview, api_version: int) -> list[ProduceResult]:
    compact = flexible(PRODUCE, api_version)
    r = response_reader(frame, PRODUCE, api_version)
    results = []
    for _ in range(r.array_len(compact)):
        topic = r.string(compact)
        for _ in range(r.array_len(compact)):
            index, error_code, base_offset = r.i32(), r.i16(), r.i64()
            if api_version >= 2:
                r.i64()  # log append time
            if api_version >= 5:
                r.i64()  # log start offset
            if api_version >= 8:
                for _ in range(r.array_len(compact)):
                    r.i32()
                    r.nullable_string(compact)
                    r.skip_tags(compact)
                r.nullable_string(compact)
            r.skip_tags(compact)
            results.append(ProduceResult(topic, index, error_code, base_offset))
        r.skip_tags(compact)
    return results


def produce_frame(
    correlation_id: int,
    client_id: str,
    topic: str,
    partition: int,
    records: bytes,
    *,
    acks: int = -1,
    timeout_ms: int = 30_000,
    version: int = 7,
) -> bytes:
    """A Produce request (v3-v8) of one partition's record batches, without its size."""
    if not 3 <= version <= 8:
        raise ValueError("produce_frame builds versions 3 to 8")
    return b"".join(
        (
            i16(PRODUCE),
            i16(version),
            i32(correlation_id),
            enc_string(client_id),
            enc_string(None),  # transactional id
            i16(acks),
            i32(timeout_ms),
            enc_array_len(1),
            enc_string(topic),
            enc_array_len(1),
            i32(partition),
            enc_bytes(records),
        )
    )


# --- OffsetCommit ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    group: str
    topic: str
    partition: int
    offset: int
    metadata: str | None


def offset_commit_request(
    frame: bytes | memoryview, header: RequestHeader
) -> list[CommittedOffset]:
    version = header.api_version
    compact = flexible(OFFSET_COMMIT, version)
    r = Reader(frame, header.body_at)
    group = r.string(compact)
    if version >= 1:
        r.i32()  # generation
        r.string(compact)  # member id
    if version >= 7:
        r.nullable_string(compact)  # group instance id
    if 2 <= version <= 4:
        r.i64()  # retention time
    offsets = []
    for _ in range(r.array_len(compact)):
        topic = r.string(compact)
        for _ in range(r.array_len(compact)):
            index, offset = r.i32(), r.i64()
            if version >= 6:
                r.i32()  # leader epoch
            if version == 1:
                r.i64()  # commit timestamp
            metadata = r.nullable_string(compact)
            r.skip_tags(compact)
            offsets.append(CommittedOffset(group, topic, index, offset, metadata))
        r.skip_tags(compact)
    return offsets


def offset_commit_response(
    frame: bytes | memoryview, api_version: int
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> error code."""
    compact = flexible(OFFSET_COMMIT, api_version)
    r = response_reader(frame, OFFSET_COMMIT, api_version)
    if api_version >= 3:
        r.i32()  # throttle time
    errors = {}
    for _ in range(r.array_len(compact)):
        topic = r.string(compact)
        for _ in range(r.array_len(compact)):
            index, error_code = r.i32(), r.i16()
            r.skip_tags(compact)
            errors[(topic, index)] = error_code
        r.skip_tags(compact)
    return errors


# --- record batches (magic 2) ---------------------------------------------------------------

BATCH_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_SIZE: Final = BATCH_HEADER.size  # 61
_CRC_FROM: Final = 21  # the CRC covers attributes to the end
_ATTR_COMPRESSION: Final = 0x07
_ATTR_TRANSACTIONAL: Final = 0x10
_ATTR_CONTROL: Final = 0x20


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    length: int  # bytes after the length field
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        return 12 + self.length

    @property
    def compression(self) -> int:
        return self.attributes & _ATTR_COMPRESSION

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _ATTR_CONTROL)


def batches(records: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Split a records field into its batches (header, whole batch bytes)."""
    view = memoryview(records)
    pos = 0
    while pos < len(view):
        if len(view) - pos < BATCH_HEADER_SIZE:
            raise WireError("truncated record batch header")
        fields = BATCH_HEADER.unpack_from(view, pos)
        header = BatchHeader(fields[0], fields[1], fields[3], *fields[4:])
        if fields[3] != 2:
            raise WireError(f"record batch magic {fields[3]} (only 2 is supported)")
        end = pos + header.size
        if end > len(view):
            raise WireError("truncated record batch")
        yield header, view[pos:end]
        pos = end


def strip_producer(frame: bytearray, produce: ProduceRequest) -> None:
    """Clear the producer id, epoch and sequence of every batch of a Produce request, in
    place, with new CRCs: the broker then takes them as plain batches (the proxy keeps
    producer ids away from the Tansu it may replace)."""
    for part in produce.partitions:
        pos = part.at
        end = part.at + len(part.records)
        while pos < end:
            fields = list(BATCH_HEADER.unpack_from(frame, pos))
            size = 12 + fields[1]
            if fields[9] != -1:
                fields[9], fields[10], fields[11] = -1, -1, -1
                BATCH_HEADER.pack_into(frame, pos, *fields)
                crc = calc_crc32c(bytes(frame[pos + _CRC_FROM : pos + size]))
                _U32.pack_into(frame, pos + 17, crc)
            pos += size


def batch_crc_ok(batch: bytes | memoryview) -> bool:
    crc = _U32.unpack_from(batch, 17)[0]
    return bool(calc_crc32c(bytes(batch[_CRC_FROM:])) == crc)


def rewrite_batch(
    batch: bytes | bytearray | memoryview,
    *,
    producer_id: int | None = None,
    producer_epoch: int | None = None,
    base_sequence: int | None = None,
) -> bytes:
    """The batch with other producer fields (and a new CRC); offsets stay as they are."""
    out = bytearray(batch)
    fields = list(BATCH_HEADER.unpack_from(out, 0))
    if producer_id is not None:
        fields[9] = producer_id
    if producer_epoch is not None:
        fields[10] = producer_epoch
    if base_sequence is not None:
        fields[11] = base_sequence
    BATCH_HEADER.pack_into(out, 0, *fields)
    _U32.pack_into(out, 17, calc_crc32c(bytes(out[_CRC_FROM:])))
    return bytes(out)


# --- CreateTopics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewTopicRequest:
    name: str
    partitions: int
    config: dict[str, str]


def create_topics_request(
    frame: bytes | memoryview, header: RequestHeader
) -> tuple[list[NewTopicRequest], bool]:
    """The topics asked for and whether it is only a validation."""
    version = header.api_version
    compact = flexible(CREATE_TOPICS, version)
    r = Reader(frame, header.body_at)
    topics = []
    for _ in range(r.array_len(compact)):
        name, partitions = r.string(compact), r.i32()
        r.i16()  # replication factor
        assigned = 0
        for _ in range(r.array_len(compact)):
            r.i32()
            for _ in range(r.array_len(compact)):
                r.i32()
            r.skip_tags(compact)
            assigned += 1
        config = {}
        for _ in range(r.array_len(compact)):
            key, value = r.string(compact), r.nullable_string(compact)
            r.skip_tags(compact)
            if value is not None:
                config[key] = value
        r.skip_tags(compact)
        topics.append(NewTopicRequest(name, partitions if partitions > 0 else assigned, config))
    r.i32()  # timeout
    validate_only = bool(r.i8()) if version >= 1 else False
    return topics, validate_only


def create_topics_response(frame: bytes | memoryview, api_version: int) -> dict[str, int]:
    """Topic name -> error code."""
    compact = flexible(CREATE_TOPICS, api_version)
    r = response_reader(frame, CREATE_TOPICS, api_version)
    if api_version >= 2:
        r.i32()  # throttle time
    errors = {}
    for _ in range(r.array_len(compact)):
        name = r.string(compact)
        if api_version >= 7:
            r.skip(16)  # topic id
        error_code = r.i16()
        if api_version >= 1:
            r.nullable_string(compact)
        if api_version >= 5:
            r.i32()
            r.i16()
            for _ in range(r.array_len(compact)):
                r.string(compact)
                r.nullable_string(compact)
                r.i8()
                r.i8()
                r.i8()
                r.skip_tags(compact)
        r.skip_tags(compact)
        errors[name] = error_code
    return errors


def patch_acks(frame: bytearray, header: RequestHeader, acks: int) -> None:
    """Set a Produce request's ``acks`` in place (the field follows the transactional id)."""
    compact = flexible(PRODUCE, header.api_version)
    r = Reader(frame, header.body_at)
    if header.api_version >= 3:
        r.nullable_string(compact)
    _I16.pack_into(frame, r.pos, acks)


def create_topics_frame(
    correlation_id: int, client_id: str, topics: list[NewTopicRequest], timeout_ms: int = 30_000
) -> bytes:
    """A CreateTopics v4 request (Tansu places the partitions)."""
    parts = [i16(CREATE_TOPICS), i16(4), i32(correlation_id), enc_string(client_id)]
    parts.append(enc_array_len(len(topics)))
    for topic in topics:
        parts += [enc_string(topic.name), i32(topic.partitions), i16(1), enc_array_len(0)]
        parts.append(enc_array_len(len(topic.config)))
        for key, value in sorted(topic.config.items()):
            parts += [enc_string(key), enc_string(value)]
    parts += [i32(timeout_ms), b"\x00"]
    return b"".join(parts)


def offset_commit_frame(
    correlation_id: int, client_id: str, group: str, offsets: list[CommittedOffset]
) -> bytes:
    """An OffsetCommit v2 request outside any group generation (a restore of positions)."""
    by_topic: dict[str, list[CommittedOffset]] = {}
    for offset in offsets:
        by_topic.setdefault(offset.topic, []).append(offset)
    parts = [i16(OFFSET_COMMIT), i16(2), i32(correlation_id), enc_string(client_id)]
    parts += [enc_string(group), i32(-1), enc_string(""), i64(-1)]
    parts.append(enc_array_len(len(by_topic)))
    for topic, items in by_topic.items():
        parts += [enc_string(topic), enc_array_len(len(items))]
        for item in items:
            parts += [i32(item.partition), i64(item.offset), enc_string(item.metadata)]
    return b"".join(parts)


def cap_fetch_bytes(frame: bytes, header: RequestHeader, limit: int) -> bytes | None:
    """The Fetch request with its response size limit (``max_bytes``, v3 on) lowered to
    ``limit``, or None when it asks for no more (no copy then). The fields before it have
    a fixed size: the replica id (until v14), the wait and the minimum."""
    if header.api_version < 3:
        return None
    at = header.body_at + (4 if header.api_version < 15 else 0) + 8
    if _I32.unpack_from(frame, at)[0] <= limit:
        return None
    out = bytearray(frame)
    _I32.pack_into(out, at, limit)
    return bytes(out)

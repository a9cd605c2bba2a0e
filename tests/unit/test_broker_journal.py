"""The broker journal on disk: entries read back, a torn tail is cut off, damage is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streambill.broker import journal as jr
from streambill.broker import wire
from streambill.broker.journal import BatchesEntry, CommitEntry, Journal, JournalCorrupt, TopicEntry


def batch(values: list[bytes], pid: int = -1) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, pid, 0 if pid >= 0 else -1, 0, 1 << 20)
    for delta, value in enumerate(values):
        builder.append(delta, 1_700_000_000_000 + delta, b"k", value, [])
    return bytes(builder.build())


def fill(directory: Path, count: int) -> list[bytes]:
    journal = Journal.open(directory)
    payloads = [
        jr.encode_batches("t", 0, i * 2, batch([b"a%d" % i, b"b%d" % i])) for i in range(count)
    ]
    for payload in payloads:
        journal.append([payload])
    journal.close()
    return payloads


def test_entries_of_every_kind_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    records = batch([b"x", b"y"])
    journal.append(
        [
            jr.encode_topic("t", 3, {"cleanup.policy": "compact"}),
            jr.encode_batches("t", 2, 40, records),
            jr.encode_commit("g", "t", 2, 42, None),
        ]
    )
    journal.close()
    entries = list(Journal.open(tmp_path).entries())
    assert entries == [
        TopicEntry("t", 3, {"cleanup.policy": "compact"}),
        BatchesEntry("t", 2, 40, records),
        CommitEntry("g", "t", 2, 42, None),
    ]


@pytest.mark.parametrize("cut", [1, 4, 9, 30])
def test_a_torn_tail_is_cut_off_and_every_earlier_entry_kept(tmp_path: Path, cut: int) -> None:
    fill(tmp_path, 10)
    (segment,) = tmp_path.glob("*.log")
    size = segment.stat().st_size
    os.truncate(segment, size - cut)  # the last write was interrupted

    journal = Journal.open(tmp_path)
    entries = list(journal.entries())
    assert [e.base_offset for e in entries if isinstance(e, BatchesEntry)] == list(range(0, 18, 2))
    assert journal.truncated_bytes == size - cut - segment.stat().st_size
    assert journal.truncated_bytes > 0
    # Appends go on after the cut, and read back.
    journal.append([jr.encode_commit("g", "t", 0, 18, "m")])
    journal.close()
    assert list(Journal.open(tmp_path).entries())[-1] == CommitEntry("g", "t", 0, 18, "m")


def test_a_flipped_byte_in_the_last_entry_counts_as_torn(tmp_path: Path) -> None:
    fill(tmp_path, 5)
    (segment,) = tmp_path.glob("*.log")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert len(list(Journal.open(tmp_path).entries())) == 4


def test_damage_before_newer_segments_refuses_to_start(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    (first,) = tmp_path.glob("*.log")
    later = tmp_path / f"{99:020d}.log"
    later.write_bytes(jr.frame(jr.encode_commit("g", "t", 0, 1, None)))
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        Journal.open(tmp_path)
    assert str(first) in info.value.message


def test_produce_requests_decode_in_every_encoding() -> None:
    records = batch([b"v"])
    frame = wire.produce_frame(7, "c", "topic", 3, records, acks=0)
    header = wire.request_header(frame)
    assert (header.api_key, header.api_version, header.correlation_id) == (wire.PRODUCE, 7, 7)
    request = wire.produce_request(frame, header)
    assert request.acks == 0
    (part,) = request.partitions
    assert (part.topic, part.partition, part.records) == ("topic", 3, records)
    assert frame[part.at : part.at + len(records)] == records
    patched = bytearray(frame)
    wire.patch_acks(patched, header, 1)
    assert wire.produce_request(bytes(patched), header).acks == 1
    (batch_header, raw) = next(wire.batches(records))
    assert batch_header.record_count == 1 and bytes(raw) == records
    assert wire.batch_crc_ok(records)


def test_a_rewritten_batch_keeps_its_records_under_a_new_crc() -> None:
    original = batch([b"a", b"b"], pid=77)
    stripped = wire.rewrite_batch(original, producer_id=-1, producer_epoch=-1, base_sequence=-1)
    header, _ = next(wire.batches(stripped))
    assert (header.producer_id, header.record_count) == (-1, 2)
    assert wire.batch_crc_ok(stripped)
    assert stripped[61:] == original[61:]


def test_producer_ids_are_stripped_in_place_and_the_batches_still_check() -> None:
    first, second = batch([b"a", b"b"], pid=9), batch([b"c"], pid=9)
    frame = bytearray(wire.produce_frame(1, "c", "topic", 0, first + second))
    header = wire.request_header(frame)
    request = wire.produce_request(bytes(frame), header)
    wire.strip_producer(frame, request)
    (part,) = wire.produce_request(bytes(frame), header).partitions
    batches = list(wire.batches(part.records))
    assert [(h.producer_id, h.base_sequence, h.record_count) for h, _ in batches] == [
        (-1, -1, 2),
        (-1, -1, 1),
    ]
    assert all(wire.batch_crc_ok(raw) for _, raw in batches)


def test_a_compaction_killed_half_way_leaves_the_journal_as_it_was(tmp_path: Path) -> None:
    """A checkpoint being written (.tmp), or renamed without its trailer, is dropped; one
    that is complete stands for the segments below its number, which are then removed."""
    fill(tmp_path, 4)
    (tmp_path / "checkpoint-00000000000000000002.tmp").write_bytes(b"half")
    torn = tmp_path / "checkpoint-00000000000000000002.log"
    torn.write_bytes(jr.frame(jr.encode_commit("g", "t", 0, 1, None)))  # no trailer
    journal = Journal.open(tmp_path)
    assert len(list(journal.entries())) == 4
    assert not torn.exists() and not list(tmp_path.glob("*.tmp"))

    below = journal.roll()
    journal.install_checkpoint(below, [jr.encode_commit("g", "t", 0, 9, None)])
    journal.append([jr.encode_commit("g", "t", 0, 10, None)])
    journal.close()
    reopened = Journal.open(tmp_path)
    assert [e.offset for e in reopened.entries() if isinstance(e, CommitEntry)] == [9, 10]
    assert [p.name[:6] for p in reopened.paths()] == ["checkp", "000000"]


def test_a_fetch_asks_for_at_most_the_cap() -> None:
    for version, replica in ((11, True), (16, False)):
        body = (wire.i32(-1) if replica else b"") + wire.i32(500) + wire.i32(1) + wire.i32(50 << 20)
        frame = bytearray(
            wire.i16(wire.FETCH) + wire.i16(version) + wire.i32(3) + wire.enc_string("c")
        )
        if version >= 12:
            frame += b"\x00"  # header tags
        frame += body + b"\x00" * 8
        header = wire.request_header(frame)
        capped = wire.cap_fetch_bytes(bytes(frame), header, 8 << 20)
        assert capped is not None
        at = header.body_at + (4 if replica else 0)
        assert wire.Reader(capped, at).i32() == 500  # the wait is untouched
        assert wire.Reader(capped, at + 8).i32() == 8 << 20
        assert wire.cap_fetch_bytes(capped, header, 8 << 20) is None

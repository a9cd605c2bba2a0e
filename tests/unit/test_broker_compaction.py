"""What the journal's retention keeps of a partition (pure: no files, no broker)."""

from __future__ import annotations

from streambill.broker.compaction import DAY_MS, Retention, retained
from streambill.broker.journal import TopicEntry
from streambill.broker.replay import Record

NOW = 1_800_000_000_000
HOUR = 3600 * 1000


def rec(offset: int, key: bytes | None, value: bytes | None, age_ms: int) -> Record:
    return Record(offset, NOW - age_ms, key, value, [])


def offsets(records: list[Record]) -> list[int]:
    return [r.offset for r in records]


def test_a_compacted_topic_keeps_each_keys_latest_record() -> None:
    records = [
        rec(0, b"a", b"1", 5 * HOUR),
        rec(1, b"b", b"1", 5 * HOUR),
        rec(2, b"a", b"2", 4 * HOUR),
        rec(5, b"c", b"1", 3 * HOUR),  # offsets 3-4 were compacted away before
        rec(6, b"b", None, 2 * DAY_MS),  # an old delete: everyone saw it
        rec(7, b"c", None, HOUR),  # a young delete: kept
        rec(8, b"d", b"1", 0),
    ]
    kept = retained(records, True, 10 * DAY_MS, DAY_MS, NOW)
    assert offsets(kept) == [2, 7, 8]


def test_a_delete_topic_keeps_what_is_younger_than_its_retention() -> None:
    records = [rec(i, b"k", b"v", (10 - i) * HOUR) for i in range(10)]
    assert offsets(retained(records, False, 3 * HOUR, DAY_MS, NOW)) == [7, 8, 9]


def test_the_last_record_always_stays_so_the_end_offset_does() -> None:
    old = [rec(i, b"k", b"v", 50 * HOUR) for i in range(4)]
    assert offsets(retained(old, False, HOUR, DAY_MS, NOW)) == [3]
    deleted = [rec(0, b"a", b"1", 3 * DAY_MS), rec(1, b"a", None, 2 * DAY_MS)]
    assert offsets(retained(deleted, True, DAY_MS, DAY_MS, NOW)) == [1]
    assert retained([], True, DAY_MS, DAY_MS, NOW) == []


def test_a_topics_own_config_beats_the_default() -> None:
    retention = Retention(default_ms=DAY_MS)
    assert retention.of(None) == (False, DAY_MS)
    assert retention.of(TopicEntry("t", 1, {"retention.ms": "60000"})) == (False, 60_000)
    compacted, _ = retention.of(TopicEntry("c", 1, {"cleanup.policy": "compact,delete"}))
    assert compacted
    assert retention.of(TopicEntry("t", 1, {"retention.ms": "-1"}))[1] > 100 * 365 * DAY_MS

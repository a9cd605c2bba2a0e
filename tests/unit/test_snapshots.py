"""The snapshot table store: what it writes is what it loads, offsets drive recovery."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
from faust.types import TP

from streambill.agents.snapshots import (
    SnapshotStore,
    discard_stale,
    read_offsets,
    register,
    snapshot_path,
)


def store(directory: Path, name: str = "balances") -> SnapshotStore:
    app = faust.App("snapshot-test", store="memory://")
    table = SimpleNamespace(name=name)
    return SnapshotStore(f"snapshot://{directory}", app, table, table_name=name)


def changelog_event(partition: int, offset: int, key: bytes, value: bytes | None) -> object:
    msg = SimpleNamespace(partition=partition, offset=offset, value=value)
    return SimpleNamespace(key=key, value=value, message=msg)


def test_snapshot_round_trip_restores_keys_and_offsets(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.data[b"cus_1"] = b'{"b":1}'
    first.data[b"cus_\xc3\xa9"] = b'{"b":2}'
    assert first.write_snapshot({0: 41, 3: 7}) == 2

    second = store(tmp_path)
    assert dict(second.data) == {b"cus_1": b'{"b":1}', b"cus_\xc3\xa9": b'{"b":2}'}
    assert second.persisted_offset(TP("t", 0)) == 41
    assert second.persisted_offset(TP("t", 3)) == 7
    assert second.persisted_offset(TP("t", 1)) is None


def test_recovery_batches_advance_offsets_and_tombstones_delete(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.data[b"gone"] = b"x"
    s.apply_changelog_batch(
        [changelog_event(2, 10, b"cus_2", b"v"), changelog_event(2, 11, b"gone", None)],
        to_key=lambda k: k,
        to_value=lambda v: v,
    )
    assert s.data.get(b"cus_2") == b"v" and b"gone" not in s.data
    assert s.persisted_offset(TP("t", 2)) == 11


def test_a_snapshot_ahead_of_its_changelog_is_discarded(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.data[b"k"] = b"v"
    s.write_snapshot({0: 100, 1: 5})
    path = snapshot_path(tmp_path, "balances")
    assert read_offsets(path) == {0: 100, 1: 5}
    assert discard_stale(path, {0: 101, 1: 6}) is False  # the log goes on past the snapshot
    assert path.exists()
    assert discard_stale(path, {0: 3, 1: 6}) is True  # an empty broker started over
    assert not path.exists()
    assert store(tmp_path).data.get(b"k") is None


def test_unreadable_or_foreign_snapshots_are_ignored(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path, "balances")
    path.write_bytes(b"{broken")
    assert read_offsets(path) is None
    assert dict(store(tmp_path).data) == {}
    path.write_bytes(orjson.dumps({"version": 99, "offsets": {}, "data": [["k", "v"]]}))
    assert dict(store(tmp_path).data) == {}


def test_register_makes_the_url_scheme_known() -> None:
    register()
    from faust.stores import by_url

    assert by_url("snapshot:///tmp/x") is SnapshotStore


def test_chunked_write_is_one_document_and_the_frozen_copy_ignores_later_writes(
    tmp_path: Path,
) -> None:
    first = store(tmp_path)
    for i in range(2_501):
        first.data[b"cus_%d" % i] = b'{"b":%d}' % i
    frozen = first.freeze({2: 9})
    first.data[b"cus_late"] = b'{"b":-1}'  # a batch after the freeze: not in this snapshot
    assert frozen.write(chunk=100) == 2_501
    doc = orjson.loads(snapshot_path(tmp_path, "balances").read_bytes())
    assert doc["offsets"] == {"2": 9}
    assert len(doc["data"]) == 2_501
    second = store(tmp_path)
    assert len(second.data) == 2_501 and b"cus_late" not in second.data
    assert second.data[b"cus_2500"] == b'{"b":2500}'

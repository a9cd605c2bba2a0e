"""When the journal proxy compacts and rotates: due by size, held back during a burst, never
past its overdue bound (a real journal on disk; the rotation itself is recorded, not run)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streambill.broker import journal as jr
from streambill.broker import proxy as px
from streambill.broker.journal import Journal

CHECK_S = 0.05
COMPACT_BYTES = 20_000


class _NoBroker:
    """The data Tansu as the maintenance loop sees it: running."""

    def poll(self) -> int | None:
        return None


def _segment_bytes(journal: Journal) -> int:
    return sum(p.stat().st_size for p in journal.paths() if p.name[0].isdigit())


def _proxy(tmp_path: Path, rotations: list[int]) -> px.JournalProxy:
    journal = Journal.open(tmp_path / "journal")
    proxy = px.JournalProxy(
        journal,
        _NoBroker(),  # type: ignore[arg-type]
        compact_bytes=COMPACT_BYTES,
        compact_check_s=CHECK_S,
        rotate_batches=10**9,
    )

    async def rotate() -> None:
        rotations.append(_segment_bytes(journal))
        for path in journal.paths(below=journal.roll()):
            path.unlink()  # what a compaction leaves: nothing below the roll
        journal.close()
        proxy.journal = Journal.open(tmp_path / "journal")

    proxy.rotate = rotate  # type: ignore[method-assign]
    return proxy


def _write(proxy: px.JournalProxy, size: int) -> None:
    proxy.journal.append([jr.encode_batches("t", 0, 0, b"x" * size)])


async def _until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.01)


async def test_a_due_rotation_waits_out_a_burst_but_not_past_its_overdue_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(px, "BUSY_BYTES_PER_S", 20_000)
    rotations: list[int] = []
    proxy = _proxy(tmp_path, rotations)
    maintain = asyncio.create_task(proxy._maintain())
    try:
        # A burst: 4 KB every 10 ms (400 KB/s, 20 times the busy rate). The journal passes
        # its threshold...
        while _segment_bytes(proxy.journal) < px.OVERDUE * COMPACT_BYTES - 4_500:
            _write(proxy, 4_000)
            await asyncio.sleep(0.01)
            if _segment_bytes(proxy.journal) > 2 * COMPACT_BYTES:
                assert rotations == [], "rotated during a burst before it was overdue"
        assert _segment_bytes(proxy.journal) > COMPACT_BYTES  # due all along
        assert rotations == []
        # ...and once it is overdue, it rotates although the burst goes on.
        deadline = time.monotonic() + 5
        while not rotations:
            assert time.monotonic() < deadline, "an overdue rotation never came"
            _write(proxy, 4_000)
            await asyncio.sleep(0.01)
        assert rotations[0] >= px.OVERDUE * COMPACT_BYTES
    finally:
        maintain.cancel()
        proxy.journal.close()


async def test_a_due_rotation_runs_once_the_burst_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(px, "BUSY_BYTES_PER_S", 20_000)
    rotations: list[int] = []
    proxy = _proxy(tmp_path, rotations)
    maintain = asyncio.create_task(proxy._maintain())
    try:
        while _segment_bytes(proxy.journal) < 2 * COMPACT_BYTES:
            _write(proxy, 4_000)
            await asyncio.sleep(0.01)
        assert rotations == []  # due, busy, not overdue
        # Quiet now: the next check rotates.
        await _until(lambda: rotations, 5, "a rotation after the burst")
        assert COMPACT_BYTES <= rotations[0] < px.OVERDUE * COMPACT_BYTES
    finally:
        maintain.cancel()
        proxy.journal.close()


async def test_a_quiet_journal_rotates_as_soon_as_it_is_due(tmp_path: Path) -> None:
    rotations: list[int] = []
    proxy = _proxy(tmp_path, rotations)
    maintain = asyncio.create_task(proxy._maintain())
    try:
        _write(proxy, COMPACT_BYTES // 2)
        await asyncio.sleep(CHECK_S * 4)
        assert rotations == []  # not due
        _write(proxy, COMPACT_BYTES)  # 30 KB at once, then quiet: below 1 MiB/s
        await _until(lambda: rotations, 5, "a rotation once due")
    finally:
        maintain.cancel()
        proxy.journal.close()

"""SourcePositions: records are admitted in offset order, once; skips are sought back."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from streambill.agents.positions import STALL_AFTER_S, TP, SourcePositions

T = "billing.usage.v1"


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


class FakeBroker:
    """A log per partition (the offsets that hold records) and the group's commits."""

    def __init__(self, offsets: dict[int, list[int]], committed: dict[int, int]) -> None:
        self.offsets = offsets
        self.committed = committed
        self.seeks: list[tuple[TP, int]] = []

    async def resolve(self, tp: TP) -> int:
        return self.committed.get(tp.partition, self.offsets[tp.partition][0])

    async def probe(self, tp: TP, offset: int) -> int | None:
        return next((o for o in self.offsets[tp.partition] if o >= offset), None)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def positions(broker: FakeBroker) -> SourcePositions:
    return SourcePositions([T], broker.resolve, broker.probe, broker.seek)


def admit(p: SourcePositions, *offsets: int, partition: int = 0) -> list[int]:
    return [r.offset for r in asyncio.run(p.admit([Rec(T, partition, o) for o in offsets]))]


def test_starts_at_the_committed_offset_and_admits_in_order() -> None:
    broker = FakeBroker({0: list(range(100))}, committed={0: 10})
    p = positions(broker)
    assert admit(p, 10, 11, 12) == [10, 11, 12]
    assert p.expected[TP(T, 0)] == 13
    assert broker.seeks == []


def test_a_skip_is_held_back_and_sought_back_once_then_resumes() -> None:
    broker = FakeBroker({0: list(range(100))}, committed={0: 10})
    p = positions(broker)
    # The consumer jumps from 10 to 40 (what Faust's read offsets did after a rebalance).
    assert admit(p, 10, 40, 41, 42) == [10]
    assert broker.seeks == [(TP(T, 0), 11)]
    assert p.held_back == 3
    # Stale records keep arriving before the seek takes effect: no second seek.
    assert admit(p, 43, 44) == []
    assert broker.seeks == [(TP(T, 0), 11)]
    # After the seek, 11.. arrive; everything up to 44 is applied once, in order.
    assert admit(p, *range(11, 45)) == list(range(11, 45))
    assert admit(p, 40, 41) == []  # re-fetched again: already admitted
    assert p.redelivered == 2


def test_a_real_hole_in_the_log_is_crossed_without_a_seek() -> None:
    # Offsets 5..7 hold no records (transaction markers, retention).
    broker = FakeBroker({0: [0, 1, 2, 3, 4, 8, 9]}, committed={})
    p = positions(broker)
    assert admit(p, 0, 1, 2, 3, 4, 8, 9) == [0, 1, 2, 3, 4, 8, 9]
    assert broker.seeks == []


def test_below_the_committed_offset_nothing_is_applied_again() -> None:
    broker = FakeBroker({0: list(range(50))}, committed={0: 30})
    p = positions(broker)
    assert admit(p, 28, 29, 30) == [30]
    assert p.redelivered == 2


def test_commits_only_what_was_published_and_reset_reads_afresh() -> None:
    broker = FakeBroker({0: list(range(50)), 1: list(range(50))}, committed={0: 0, 1: 5})
    p = positions(broker)
    batch = asyncio.run(p.admit([Rec(T, 0, 0), Rec(T, 1, 5), Rec(T, 0, 1)]))
    assert p.committable(TP(T, 0)) is None  # admitted, not yet published
    p.mark_published(batch)
    assert (p.committable(TP(T, 0)), p.committable(TP(T, 1))) == (2, 6)
    broker.committed[0] = 2
    p.reset([TP(T, 0)])
    assert p.committable(TP(T, 0)) is None
    assert admit(p, 1, 2) == [2]  # 1 was committed before the reset


def test_partitions_are_independent() -> None:
    broker = FakeBroker({0: list(range(20)), 1: list(range(20))}, committed={0: 0, 1: 0})
    p = positions(broker)
    got = asyncio.run(p.admit([Rec(T, 0, 0), Rec(T, 1, 3), Rec(T, 1, 0), Rec(T, 0, 1)]))
    assert [(r.partition, r.offset) for r in got] == [(0, 0), (1, 0), (0, 1)]
    assert broker.seeks == [(TP(T, 1), 0)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nudge(p: SourcePositions, highwater: int | None, partition: int = 0) -> bool:
    return asyncio.run(p.nudge(TP(T, partition), highwater))


def test_records_lost_at_the_end_of_a_partition_are_sought_back_after_a_quiet_spell() -> None:
    # The consumer fetched 76..155 (log end 156) and lost them: nothing arrives to show a skip.
    broker = FakeBroker({0: list(range(156))}, committed={0: 76})
    clock = Clock()
    p = SourcePositions([T], broker.resolve, broker.probe, broker.seek, clock=clock)
    assert nudge(p, 156) is False  # starts the clock
    clock.now += STALL_AFTER_S - 0.5
    assert nudge(p, 156) is False
    clock.now += 1.0
    assert nudge(p, 156) is True
    assert broker.seeks == [(TP(T, 0), 76)] and p.stalls == 1
    # Right after the seek it waits again before seeking once more.
    assert nudge(p, 156) is False
    assert admit(p, *range(76, 156)) == list(range(76, 156))
    clock.now += 60
    assert nudge(p, 156) is False  # caught up
    assert broker.seeks == [(TP(T, 0), 76)]


def test_a_partition_that_keeps_moving_or_has_no_end_yet_is_left_alone() -> None:
    broker = FakeBroker({0: list(range(100))}, committed={0: 0})
    clock = Clock()
    p = SourcePositions([T], broker.resolve, broker.probe, broker.seek, clock=clock)
    for start in range(0, 60, 10):
        assert nudge(p, 100) is False
        assert admit(p, *range(start, start + 10)) == list(range(start, start + 10))
        clock.now += STALL_AFTER_S - 1  # progress within every quiet spell
    assert nudge(p, None) is False  # nothing fetched yet: no end known
    assert broker.seeks == []


def test_a_tail_without_records_moves_on_without_a_seek() -> None:
    # 10..11 are transaction markers: the end (12) is never reached by a record.
    broker = FakeBroker({0: list(range(10))}, committed={0: 10})
    clock = Clock()
    p = SourcePositions([T], broker.resolve, broker.probe, broker.seek, clock=clock)
    assert nudge(p, 12) is False
    clock.now += STALL_AFTER_S + 1
    assert nudge(p, 12) is False
    assert broker.seeks == []
    # Records produced after the markers are then admitted without a seek.
    broker.offsets[0] += [12, 13]
    assert admit(p, 12, 13) == [12, 13]
    assert broker.seeks == []

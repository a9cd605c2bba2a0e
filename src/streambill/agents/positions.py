"""Source positions: every record of a source partition applied once, in offset order.

Faust's consumer keeps its own read offset per partition and drops any message below it;
it also records "gaps" when a message arrives beyond the next offset and later commits
across them. Around rebalances and table recovery its read offsets and the fetch positions
of the underlying client drift apart (seen here: after a restart, the first message after
the seek to the committed offset 3170 was 5085 on three partitions at once, one fetch's
worth; a later seek back re-fetched 3171.. and Faust dropped every one of them as already
read). The worker then commits past messages it never processed, and SIGKILL loses them.

So the worker does not let Faust decide. :class:`SourcePositions` knows, per source
partition, the next offset to apply (``expected``) and how far everything is applied and
published (``published``). It admits a record only at the expected offset; one below was
already admitted; one beyond it means the consumer skipped messages: the record is held
back and the partition is sought back to the expected offset. A real hole in the log (a
transaction marker, records removed by retention) is told apart by asking the broker for
the first offset at or after the expected one. The consumer commits ``published`` and
nothing else (see :mod:`streambill.agents.consumer`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple, TypeVar

from streambill.domain.ledger import Source

log = logging.getLogger(__name__)

RESEEK_AFTER_S = 5.0
STALL_AFTER_S = 5.0


class TP(NamedTuple):
    topic: str
    partition: int


R = TypeVar("R", bound=Source)
Resolve = Callable[[TP], Awaitable[int]]
"""The offset to start a partition at: the group's committed offset, else the log start."""
Probe = Callable[[TP, int], Awaitable[int | None]]
"""The first offset at or after the given one that holds a record (None: none yet)."""
Seek = Callable[[TP, int], Awaitable[None]]


class SourcePositions:
    """Admission control and commit positions for the source partitions of one agent."""

    def __init__(
        self,
        topics: Iterable[str],
        resolve: Resolve,
        probe: Probe,
        seek: Seek,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.topics = frozenset(topics)
        self._clock = clock
        self._resolve = resolve
        self._probe = probe
        self._seek = seek
        self.expected: dict[TP, int] = {}
        self.published: dict[TP, int] = {}
        self._probed: dict[TP, tuple[int, int | None]] = {}
        self._sought: dict[TP, tuple[int, float]] = {}
        # When each partition's expected offset last moved (or was last seen caught up).
        self._moved: dict[TP, float] = {}
        # admit() and nudge() both await the broker between reading and moving ``expected``.
        self._lock = asyncio.Lock()
        self.redelivered = 0
        self.held_back = 0
        self.seeks = 0
        self.stalls = 0

    def tracks(self, topic: str) -> bool:
        return topic in self.topics

    def reset(self, tps: Iterable[TP]) -> None:
        """Partitions were assigned or revoked: their positions are read afresh."""
        for tp in tps:
            for table in (self.expected, self.published, self._probed, self._sought, self._moved):
                table.pop(tp, None)

    async def start(self, tp: TP) -> int:
        """Resolve where ``tp`` starts (after :meth:`reset`) and expect that offset."""
        offset = self.expected[tp] = await self._resolve(tp)
        return offset

    async def admit(self, records: Iterable[R]) -> list[R]:
        """The records to apply, in order: each partition's next offsets, none twice."""
        async with self._lock:
            return await self._admit(records)

    async def _admit(self, records: Iterable[R]) -> list[R]:
        admitted: list[R] = []
        moved: set[TP] = set()
        for rec in records:
            tp = TP(rec.topic, rec.partition)
            expected = self.expected.get(tp)
            if expected is None:
                expected = self.expected[tp] = await self._resolve(tp)
            if rec.offset < expected:
                self.redelivered += 1
                continue
            if rec.offset > expected:
                expected = await self._past_hole(tp, expected, rec.offset)
                if rec.offset != expected:
                    self.held_back += 1
                    continue
            admitted.append(rec)
            self.expected[tp] = rec.offset + 1
            moved.add(tp)
        if moved:
            now = self._clock()
            for tp in moved:
                self._moved[tp] = now
        return admitted

    async def nudge(self, tp: TP, highwater: int | None) -> bool:
        """Seek ``tp`` back to its expected offset if records stopped arriving below the log
        end: nothing admitted for :data:`STALL_AFTER_S` while ``highwater`` (the end the
        consumer last fetched) lies beyond ``expected``. Returns whether it sought.

        Faust's consumer can lose fetched records without a trace: seen after a SIGKILL and
        restart, payments partitions whose client position stood at the log end (156) while
        the agent had admitted nothing past the committed offset (76), every record in
        between fetched and never delivered. Lost records in the middle of a partition show
        up in :meth:`admit` as a skip; lost records at its end never do, because nothing
        arrives after them: 41 top-ups sat unapplied until the next payment on that
        partition (the worker's ``/positions`` page shows such a state).

        Called every second for every partition the consumer fetches. A partition that is
        merely slow costs one needless re-fetch (re-fetched records are dropped as
        redelivered)."""
        if highwater is None:
            return False
        now = self._clock()
        async with self._lock:
            expected = self.expected.get(tp)
            if expected is None:
                expected = self.expected[tp] = await self._resolve(tp)
            if expected >= highwater:
                self._moved[tp] = now
                return False
            if now - self._moved.setdefault(tp, now) < STALL_AFTER_S:
                return False
            self._moved[tp] = now
            first = await self._first_record(tp, expected)
            if first is None:
                return False  # nothing readable between expected and the end (markers)
            expected = first
            log.warning(
                "%s: nothing arrived from %d for %.0f s (log end %d); seeking back to %d",
                tp,
                expected,
                STALL_AFTER_S,
                highwater,
                expected,
            )
            self.stalls += 1
            self.seeks += 1
            await self._seek(tp, expected)
            return True

    def mark_published(self, records: Iterable[Source]) -> None:
        """Everything in ``records`` (admitted by :meth:`admit`) is applied and published."""
        for rec in records:
            tp = TP(rec.topic, rec.partition)
            if rec.offset + 1 > self.published.get(tp, -1):
                self.published[tp] = rec.offset + 1

    def committable(self, tp: TP) -> int | None:
        """The offset the consumer may commit for ``tp`` (None: nothing published yet)."""
        return self.published.get(tp)

    async def _first_record(self, tp: TP, expected: int) -> int | None:
        """The first offset at or after ``expected`` holding a record (asked once per
        expected offset), with ``expected`` moved there when the offsets before hold none."""
        probed = self._probed.get(tp)
        if probed is not None and probed[0] == expected:
            first: int | None = probed[1]
        else:
            first = await self._probe(tp, expected)
            if first is not None:  # "none yet" may change: ask again next time
                self._probed[tp] = (expected, first)
        if first is not None and first > expected:
            log.warning("%s: offsets %d..%d hold no records; moving on", tp, expected, first - 1)
            self.expected[tp] = first
        return first

    async def _past_hole(self, tp: TP, expected: int, offset: int) -> int:
        """A record at ``offset`` arrived while ``expected`` was due. Returns the new
        expected offset: moved on when the broker holds nothing in between; otherwise the
        partition is sought back (at most every few seconds) and ``expected`` stays."""
        first = await self._first_record(tp, expected)
        if first is not None:
            expected = first
        if offset == expected:
            return expected
        sought = self._sought.get(tp)
        now = self._clock()
        if sought is None or sought[0] != expected or now - sought[1] > RESEEK_AFTER_S:
            log.warning(
                "%s: consumer skipped from %d to %d; seeking back to %d",
                tp,
                expected,
                offset,
                expected,
            )
            self._sought[tp] = (expected, now)
            self.seeks += 1
            await self._seek(tp, expected)
        return expected


class BrokerOffsets:
    """What :class:`SourcePositions` asks the broker: a group's committed offsets and the
    first offset holding a record. Blocking client calls, run in a thread, one at a time."""

    def __init__(self, bootstrap: str, group: str, fetch_wait_ms: int = 50) -> None:
        from confluent_kafka import Consumer

        common = {"bootstrap.servers": bootstrap, "enable.auto.commit": False}
        self._group = Consumer({**common, "group.id": group})
        self._probe = Consumer(
            {
                **common,
                "group.id": f"{group}-probe",
                "fetch.wait.max.ms": fetch_wait_ms,
                "enable.partition.eof": False,
            }
        )
        self._lock = threading.Lock()

    async def resolve(self, tp: TP) -> int:
        return await asyncio.to_thread(self._start, tp)

    async def probe(self, tp: TP, offset: int) -> int | None:
        return await asyncio.to_thread(self._first, tp, offset)

    def _start(self, tp: TP) -> int:
        from confluent_kafka import TopicPartition

        with self._lock:
            [committed] = self._group.committed([TopicPartition(tp.topic, tp.partition)], 10)
            if committed.offset >= 0:
                return int(committed.offset)
            low, _high = self._group.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=10
            )
            return int(low)

    def _first(self, tp: TP, offset: int, timeout_s: float = 5.0) -> int | None:
        from confluent_kafka import TopicPartition

        with self._lock:
            self._probe.assign([TopicPartition(tp.topic, tp.partition, offset)])
            try:
                deadline = time.monotonic() + timeout_s
                while (left := deadline - time.monotonic()) > 0:
                    for msg in self._probe.consume(1, timeout=min(left, 1.0)):
                        if msg.error() is None:
                            return int(msg.offset())  # type: ignore[arg-type]
                return None
            finally:
                self._probe.unassign()

    def close(self) -> None:
        with self._lock:
            self._group.close()
            self._probe.close()

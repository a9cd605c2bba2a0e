"""The worker's Faust consumer: offsets are committed from :mod:`.positions`, not acks.

Faust tracks a read offset per partition, drops messages below it and commits across
"gaps" it infers from jumps in the offsets it sees. Around rebalances and recovery those
read offsets drift from the client's real fetch position (see :mod:`.positions`), and
messages are then dropped and committed unprocessed. :class:`StreambillConsumer` turns
both off for the agents' source topics: every fetched message reaches the agent, whose
:class:`~streambill.agents.positions.SourcePositions` admits it in order or asks for a
seek, and the offset committed for a partition is how far its records are applied and
published. Topics without positions keep Faust's behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP as FaustTP

from streambill.agents.positions import TP, SourcePositions
from streambill.agents.publisher import CHANGELOGS, Publisher

log = logging.getLogger(__name__)


class _NoReadOffsets(dict[Any, Any]):
    """Always empty: Faust then neither drops a message as already read nor records gaps."""

    def __missing__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


class StreambillConsumer(Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _NoReadOffsets()

    def _direct(self) -> frozenset[str]:
        """Topics read by :class:`~streambill.agents.source.SourceReader`, never here."""
        return getattr(self.app, "streambill_direct_topics", frozenset())

    def _set_active_tps(self, tps: set[FaustTP]) -> set[FaustTP]:
        active = super()._set_active_tps(tps)
        direct = self._direct()
        if direct:
            active.difference_update([tp for tp in active if tp.topic in direct])
        return active

    def verify_event_path(self, now: float, tp: FaustTP) -> None:
        """Faust's livelock check runs every 2.5 s over every assigned partition and logs a
        multi-line error for each one it has not fetched. The direct topics (read by the
        SourceReader) and the changelogs paused after recovery are not fetched here by
        design: checking them filled the worker's log (9 MB in 20 minutes of demo).

        Reads the active set without computing it: ``_get_active_partitions()`` would set it
        from the assignment of the moment (during a rebalance, before recovery resumed the
        partitions) and the fetcher reads only what that set holds."""
        active = self._active_partitions
        if active is not None and tp in active:
            super().verify_event_path(now, tp)

    def resume_partitions(self, tps: Iterable[FaustTP]) -> None:
        direct = self._direct()
        super().resume_partitions([tp for tp in tps if tp.topic not in direct])

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[FaustTP]:
        """Faust commits partitions with acks; positions' partitions commit without any."""
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        registry: dict[str, SourcePositions] = getattr(self.app, "streambill_positions", {})
        for positions in set(registry.values()):
            for topic, partition in list(positions.published):
                tp = FaustTP(topic, partition)
                if tp not in seen and (topics is None or tp in topics or topic in topics):
                    seen.add(tp)
                    yield tp

    def fetch_state(self, topics: Iterable[str]) -> list[dict[str, Any]]:
        """Per assigned partition of ``topics``: what Faust fetches and where the client is.

        For operators (the worker's ``/positions`` page): a partition that stopped moving
        shows here as not ``fetching``, ``paused`` or ``buffered`` (held back because the
        stream's buffer was full). Read from the consumer thread's structures without a
        lock: a snapshot, good enough to diagnose a stall."""
        wanted = set(topics)
        active = self._active_partitions
        client: Any = getattr(getattr(self, "_thread", None), "_consumer", None)
        assignment: Any = None
        if client is not None:
            assignment = getattr(getattr(client, "_subscription", None), "subscription", None)
            assignment = getattr(assignment, "assignment", None)
        rows = []
        for tp in sorted(self.assignment()):
            if tp.topic not in wanted:
                continue
            row: dict[str, Any] = {
                "topic": tp.topic,
                "partition": tp.partition,
                "fetching": active is not None and tp in active,
                "paused": tp in self._paused_partitions,
                "buffered": tp in self._buffered_partitions,
                "committed": self._committed_offset.get(tp),
            }
            state = assignment.state_value(tp) if assignment is not None else None
            if state is not None:
                row["client_position"] = state._position
                row["client_paused"] = state.paused
                row["client_status"] = getattr(state._status, "name", str(state._status))
                row["highwater"] = state.highwater
            rows.append(row)
        return rows

    async def highwaters(self, *partitions: FaustTP) -> Mapping[FaustTP, int]:
        """End offsets; changelog partitions are sealed first.

        Faust's table recovery reads each changelog partition up to the end offset asked
        here; the embedded broker may report the base offset of the last record batch + 1
        (see :func:`~streambill.agents.publisher.seals`), and a recovery stopping there
        leaves the tail of the batch out of the table (a failover then re-applied an event
        with other contents). The changelogs are sealed here rather than after every publish.
        The end is exact for what was acknowledged before the seal: that is everything for
        the balances and dedup changelogs, whose previous owner has stopped writing them;
        the global accounts changelog may get more from other workers meanwhile, which the
        :class:`~streambill.agents.follower.ChangelogFollower` reads after recovery.
        """
        sealer: Publisher | None = getattr(self.app, "streambill_sealer", None)
        changelogs = [(tp.topic, tp.partition) for tp in partitions if tp.topic in CHANGELOGS]
        if changelogs:
            if sealer is None:
                log.warning("no sealer: changelog end offsets may be short on Tansu")
            else:
                await sealer.seal(changelogs)
        return await super().highwaters(*partitions)

    def _positions_for(self, topic: str) -> SourcePositions | None:
        registry: dict[str, SourcePositions] = getattr(self.app, "streambill_positions", {})
        return registry.get(topic)

    def _new_offset(self, tp: FaustTP) -> int | None:
        positions = self._positions_for(tp.topic)
        if positions is None:
            return super()._new_offset(tp)
        offset = positions.committable(TP(tp.topic, tp.partition))
        acked = self._acked.get(tp)
        if acked and offset is not None:
            # Faust's ack bookkeeping is not used for this topic; keep it from growing.
            keep = [o for o in acked if o >= offset]
            if len(keep) != len(acked):
                acked[:] = keep
                self._acked_index[tp] = set(keep)
        committed = self._committed_offset.get(tp)
        if offset is None or (committed is not None and offset <= committed):
            return None
        return offset

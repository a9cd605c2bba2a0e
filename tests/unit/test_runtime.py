"""BalancesRuntime: pipelined batches publish in order, and a failed publish stops them all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from streambill.agents.balances import BalancesRuntime
from streambill.agents.positions import TP, SourcePositions
from streambill.agents.publisher import PublishError
from streambill.engine.balances import BalanceEngine, Message, Record, partition_for
from streambill.streams.events import decode_account
from streambill.streams.topics import LEDGER, USAGE

PARTITIONS = 4
CID = "cus_rt"
PARTITION = partition_for(CID.encode(), PARTITIONS)


class FakePublisher:
    """Records what was published; fails the publish of chosen batches (1-based)."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.calls = 0
        self.ledger: list[dict[str, Any]] = []

    async def publish_phases(
        self, phases: Sequence[Sequence[Message]], on_phase: Callable[[int], None] | None = None
    ) -> None:
        self.calls += 1
        await asyncio.sleep(0.01)  # a broker round trip: the next batch is computed meanwhile
        if self.calls in self.fail:
            raise PublishError("broker gone")
        self.ledger += [orjson.loads(m.value or b"") for m in phases[-1] if m.topic == LEDGER]


def runtime(publisher: FakePublisher, depth: int = 1) -> BalancesRuntime:
    account = decode_account(
        orjson.dumps(
            {
                "account_id": CID,
                "kind": "customer",
                "parent_id": "res_1",
                "name": "Praxis",
                "currency": "EUR",
                "status": "active",
                "prices": [{"meter": "call_minutes", "unit_price": "0.10"}],
                "updated_at": "2026-11-25T10:00:00+00:00",
            }
        )
    )
    engine = BalanceEngine(
        partitions=PARTITIONS,
        accounts={CID: account},
        balances={},
        dedup={},
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )

    async def resolve(tp: TP) -> int:
        return 0

    async def probe(tp: TP, offset: int) -> int | None:
        return offset

    async def seek(tp: TP, offset: int) -> None:
        return None

    positions = SourcePositions([USAGE], resolve, probe, seek)
    return BalancesRuntime(engine, publisher, positions, depth=depth)  # type: ignore[arg-type]


def usage(offsets: range) -> list[Record]:
    return [
        Record(
            USAGE,
            PARTITION,
            o,
            CID.encode(),
            orjson.dumps(
                {
                    "event_id": f"e{o}",
                    "customer_id": CID,
                    "meter": "call_minutes",
                    "quantity": "1",
                    "occurred_at": "2026-11-25T10:00:00+00:00",
                }
            ),
        )
        for o in offsets
    ]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pipelined_batches_publish_in_order_and_commit_what_was_published(depth: int) -> None:
    pub = FakePublisher(fail=set())
    rt = runtime(pub, depth)

    async def run() -> None:
        await rt.process_pipelined(usage(range(0, 3)))
        assert rt.positions.committable(TP(USAGE, PARTITION)) is None  # still in flight
        for start in range(3, 9, 2):
            await rt.process_pipelined(usage(range(start, start + 2)))
            assert len(rt._in_flight) <= depth
        async with rt.lock:
            await rt.drain()

    asyncio.run(run())
    assert [e["seq"] for e in pub.ledger] == list(range(1, 10))
    assert [e["balance_micros"] for e in pub.ledger][-1] == -900_000
    assert rt.positions.committable(TP(USAGE, PARTITION)) == 9


async def _raises_on_every_later_step(rt: BalancesRuntime) -> None:
    for _ in range(2):  # it stays failed: every later step raises again
        with pytest.raises(PublishError):
            rt.check()
        with pytest.raises(PublishError):
            async with rt.lock:
                await rt.drain()
        with pytest.raises(PublishError):
            await rt.process_pipelined(usage(range(20, 21)))


@pytest.mark.parametrize("depth", [1, 2])
def test_after_a_failed_publish_nothing_later_is_published_or_committed(depth: int) -> None:
    pub = FakePublisher(fail={1})
    rt = runtime(pub, depth)

    async def run() -> None:
        await rt.process_pipelined(usage(range(0, 3)))  # its publish fails in flight
        await asyncio.sleep(0.05)
        with pytest.raises(PublishError):
            await rt.process_pipelined(usage(range(3, 5)))
        await _raises_on_every_later_step(rt)

    asyncio.run(run())
    assert pub.calls == 1 and pub.ledger == []
    assert rt.positions.committable(TP(USAGE, PARTITION)) is None


def test_a_batch_queued_behind_a_failing_publish_is_never_sent() -> None:
    pub = FakePublisher(fail={1})
    rt = runtime(pub, depth=2)

    async def run() -> None:
        await rt.process_pipelined(usage(range(0, 3)))  # its publish fails in flight
        await rt.process_pipelined(usage(range(3, 5)))  # queued behind it, not yet failed
        assert len(rt._in_flight) == 2
        await asyncio.sleep(0.05)
        await _raises_on_every_later_step(rt)

    asyncio.run(run())
    assert pub.calls == 1 and pub.ledger == []
    assert rt.positions.committable(TP(USAGE, PARTITION)) is None

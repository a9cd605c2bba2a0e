"""The commissions agent asks for a tick again after a restart (a tick asked for before may
never have reached the broker; without it a slice would stay open until 2,000 facts)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from streambill.agents import commissions as agent_module
from streambill.agents.commissions import CommissionAgent
from streambill.engine.balances import Message, Record
from streambill.engine.commissions import FACTS, MARKER_KEY, CommissionPartition, plan_marker


class FlakyPublisher:
    def __init__(self) -> None:
        self.fail = True
        self.sent: list[Message] = []

    async def publish(self, messages: list[Message]) -> None:
        if self.fail:
            self.fail = False
            raise RuntimeError("broker gone")
        self.sent += messages

    def close(self) -> None:
        pass


def partition_with_open_slice() -> CommissionPartition:
    part = CommissionPartition(0, 1)
    value = plan_marker("res_1", 1, "EUR", None).value
    part.handle(Record(FACTS, 0, 0, MARKER_KEY, value), "t")
    entry = orjson.dumps(
        {
            "entry_id": "l1",
            "customer_id": "c1",
            "reseller_id": "res_1",
            "kind": "usage",
            "amount_micros": -1_000_000,
            "currency": "EUR",
            "seq": 1,
            "occurred_at": "2026-11-03T10:00:00+00:00",
        }
    )
    part.handle(Record(FACTS, 0, 1, b"res_1", entry), "t")
    assert part.slice_start == 1
    return part


async def test_a_tick_lost_with_a_failed_publish_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_module, "TICK_S", 0.0)
    publisher = FlakyPublisher()
    agent = CommissionAgent(
        "127.0.0.1:1",
        sessions=None,  # type: ignore[arg-type]
        account_of=lambda _: None,
        partitions=1,
        fetch_wait_ms=10,
        checkpoint_s=1.0,
        publisher=publisher,  # type: ignore[arg-type]
    )
    agent._last_rates = time.monotonic() + 3600  # no rates round (no database here)
    agent.books[0] = partition_with_open_slice()
    with pytest.raises(RuntimeError):
        await agent.markers()
    agent._restart()  # what the loop does after an error; sync reloads the checkpoint
    agent.books[0] = partition_with_open_slice()
    await agent.markers()
    sent: list[Any] = [orjson.loads(m.value or b"") for m in publisher.sent]
    assert {"marker": "tick"} in sent
    agent._consumer.close()

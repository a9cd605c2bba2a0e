"""StreambillConsumer runs Faust's livelock check only where Faust itself fetches."""

from __future__ import annotations

import pytest
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP

from streambill.agents.consumer import StreambillConsumer

ACCOUNTS = TP("billing.accounts.v1", 0)
USAGE = TP("billing.usage.v1", 0)
CHANGELOG = TP("streambill-balances-changelog", 0)


def test_only_active_partitions_are_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[TP] = []
    monkeypatch.setattr(Consumer, "verify_event_path", lambda self, now, tp: checked.append(tp))
    consumer = object.__new__(StreambillConsumer)  # no app or broker needed for this check
    consumer._active_partitions = {ACCOUNTS}

    for tp in (ACCOUNTS, USAGE, CHANGELOG):
        consumer.verify_event_path(1.0, tp)

    assert checked == [ACCOUNTS]


def test_an_unknown_active_set_is_neither_checked_nor_computed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[TP] = []
    monkeypatch.setattr(Consumer, "verify_event_path", lambda self, now, tp: checked.append(tp))
    consumer = object.__new__(StreambillConsumer)
    consumer._active_partitions = None  # type: ignore[assignment]

    consumer.verify_event_path(1.0, ACCOUNTS)

    assert checked == []
    assert consumer._active_partitions is None

"""StreambillConsumer runs Faust's livelock check only where Faust itself fetches."""

from __future__ import annotations

import pytest
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP

from streambill.agents.consumer import StreambillConsumer
from streambill.streams import topics

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


class _Sealer:
    def __init__(self, log: list[object]) -> None:
        self.log = log

    async def seal(self, partitions: list[tuple[str, int]]) -> None:
        self.log.append(("seal", sorted(partitions)))


class _App:
    def __init__(self, sealer: _Sealer | None) -> None:
        self.streambill_sealer = sealer


def _recovering_consumer(
    monkeypatch: pytest.MonkeyPatch, log: list[object], sealer: _Sealer | None
) -> StreambillConsumer:
    """A consumer whose parent's ``highwaters`` logs the read and answers 7 everywhere."""

    async def highwaters(self: Consumer, *tps: TP) -> dict[TP, int]:
        log.append(("read", sorted(tps)))
        return dict.fromkeys(tps, 7)

    monkeypatch.setattr(Consumer, "highwaters", highwaters)
    consumer = object.__new__(StreambillConsumer)
    consumer.app = _App(sealer)  # type: ignore[assignment]
    return consumer


async def test_changelogs_are_sealed_before_their_end_offsets_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[object] = []
    consumer = _recovering_consumer(monkeypatch, log, _Sealer(log))
    balances = TP(topics.BALANCES_CHANGELOG, 3)
    dedup = TP(topics.DEDUP_CHANGELOG, 1)

    ends = await consumer.highwaters(balances, USAGE, dedup)

    assert ends == {balances: 7, USAGE: 7, dedup: 7}
    assert log == [
        ("seal", [(topics.BALANCES_CHANGELOG, 3), (topics.DEDUP_CHANGELOG, 1)]),
        ("read", sorted([balances, USAGE, dedup])),
    ]


async def test_end_offsets_of_source_topics_need_no_seal(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[object] = []
    consumer = _recovering_consumer(monkeypatch, log, _Sealer(log))

    await consumer.highwaters(USAGE, ACCOUNTS)

    assert log == [("read", [ACCOUNTS, USAGE])]


async def test_a_missing_sealer_is_reported_and_the_ends_still_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[object] = []
    consumer = _recovering_consumer(monkeypatch, log, None)
    balances = TP(topics.BALANCES_CHANGELOG, 0)

    assert await consumer.highwaters(balances) == {balances: 7}
    assert log == [("read", [balances])]
    assert "no sealer" in caplog.text

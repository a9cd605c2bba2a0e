"""A periodic snapshot seals the owned changelog partitions before it reads their ends."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from streambill.agents import worker
from streambill.settings import load_settings
from streambill.streams import topics


class _Frozen:
    def write(self) -> int:
        return 1


class _Store:
    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log = name, log

    def freeze(self, sealed: Mapping[int, int]) -> _Frozen:
        self.log.append(("freeze", self.name, dict(sealed)))
        return _Frozen()


class _Sealer:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def seal(self, partitions: list[tuple[str, int]]) -> None:
        self.log.append(("seal", sorted(partitions)))


class _Runtime:
    def __init__(self, log: list[Any], dirty: bool = False) -> None:
        self.lock = asyncio.Lock()
        self.dirty = dirty
        self.log = log

    async def drain(self) -> None:
        self.log.append(("drain",))


def _runtime(log: list[Any], dirty: bool = False) -> Any:
    return _Runtime(log, dirty)


def _sealer(log: list[Any]) -> Any:
    return _Sealer(log)


def _tables(log: list[Any]) -> Any:
    names = ("balances", "dedup", "accounts")
    return SimpleNamespace(**{name: SimpleNamespace(data=_Store(name, log)) for name in names})


async def test_seal_then_read_the_ends_then_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[Any] = []

    def ends(settings: Any, owned: set[int]) -> dict[str, dict[int, int]]:
        log.append(("ends", sorted(owned)))
        return {topics.BALANCES_CHANGELOG: {1: 40, 3: -1}, topics.DEDUP_CHANGELOG: {1: 7, 3: 2}}

    monkeypatch.setattr(worker, "snapshot_ends", ends)
    settings = load_settings()

    await worker.take_snapshots(settings, _tables(log), _runtime(log), {1, 3}, _sealer(log))

    assert log == [
        ("drain",),
        (
            "seal",
            [
                (topics.BALANCES_CHANGELOG, 1),
                (topics.BALANCES_CHANGELOG, 3),
                (topics.DEDUP_CHANGELOG, 1),
                (topics.DEDUP_CHANGELOG, 3),
            ],
        ),
        ("ends", [1, 3]),
        ("freeze", "balances", {1: 40}),  # an empty partition (-1) bounds nothing
        ("freeze", "dedup", {1: 7, 3: 2}),
        ("freeze", "accounts", {}),
    ]


async def test_no_snapshot_while_the_stores_are_ahead_of_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[Any] = []

    def ends(*args: Any) -> dict[str, dict[int, int]]:
        log.append(("ends",))
        return {}

    monkeypatch.setattr(worker, "snapshot_ends", ends)

    await worker.take_snapshots(
        load_settings(), _tables(log), _runtime(log, dirty=True), {0}, _sealer(log)
    )

    assert log == [("drain",)]

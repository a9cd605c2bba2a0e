"""The bench waits for the sink before its baseline, and stops waiting when it cannot help."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streambill import bench
from streambill.settings import load_settings


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _run(monkeypatch: pytest.MonkeyPatch, lags: Iterator[int | None]) -> tuple[float, int]:
    clock, calls = _Clock(), [0]

    def group_lag(*args: object) -> int | None:
        calls[0] += 1
        return next(lags)

    monkeypatch.setattr(bench, "group_lag", group_lag)
    monkeypatch.setattr(bench.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(bench.time, "sleep", clock.sleep)
    started = clock.now
    bench._quiesce(load_settings())
    return clock.now - started, calls[0]


def test_waits_until_the_sink_caught_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    waited, calls = _run(monkeypatch, iter([5000, 2000, 0, 999]))
    assert (waited, calls) == (1.0, 3)
    assert "caught up" in capsys.readouterr().err


def test_stops_waiting_when_the_sink_does_not_move(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    waited, _ = _run(monkeypatch, iter([300] * 1000))
    assert bench.QUIET_STALLED_S <= waited < bench.QUIET_STALLED_S + 1
    assert "still 300 messages behind" in capsys.readouterr().err


def test_gives_up_after_the_timeout_while_the_sink_still_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waited, _ = _run(monkeypatch, iter(range(10**6, 0, -1)))
    assert bench.QUIET_TIMEOUT_S <= waited < bench.QUIET_TIMEOUT_S + 1


def test_no_sink_no_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    waited, calls = _run(monkeypatch, iter([None]))
    assert (waited, calls) == (0.0, 1)
    assert "no sink" in capsys.readouterr().err

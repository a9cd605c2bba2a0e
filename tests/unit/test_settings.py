"""Derived settings: fetch waits chosen per broker and per consumer."""

from __future__ import annotations

import os

import pytest

from streambill.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("STREAMBILL_"):
            monkeypatch.delenv(key)


def test_the_sink_waits_longer_than_the_hot_path_on_the_embedded_broker() -> None:
    settings = load_settings(broker_storage="memory")
    assert settings.fetch_max_wait_ms == 20
    assert settings.sink_fetch_wait_ms == 200


def test_the_sink_keeps_a_longer_broker_wait() -> None:
    assert load_settings(kafka_bootstrap="kafka:9092").sink_fetch_wait_ms == 500
    assert load_settings(kafka_fetch_max_wait_ms=900).sink_fetch_wait_ms == 900


def test_an_explicit_sink_wait_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMBILL_SINK_FETCH_MAX_WAIT_MS", "50")
    assert load_settings(broker_storage="memory").sink_fetch_wait_ms == 50

"""The accounts agent keeps the newest version of an account when the outbox repeats older
changes after a crash (at-least-once delivery)."""

from __future__ import annotations

import orjson

from streambill.agents.accounts import _stale


def _raw(version: int | None) -> bytes:
    doc: dict[str, object] = {
        "account_id": "cus_1",
        "kind": "customer",
        "currency": "EUR",
        "updated_at": "2026-11-25T10:00:00+00:00",
    }
    if version is not None:
        doc["version"] = version
    return orjson.dumps(doc)


def test_older_and_equal_versions_are_stale_newer_are_not() -> None:
    store = {"cus_1": _raw(3)}
    assert _stale(2, {}, store, "cus_1")
    assert _stale(3, {}, store, "cus_1")
    assert not _stale(4, {}, store, "cus_1")


def test_versions_seen_earlier_in_the_batch_count() -> None:
    assert _stale(4, {"cus_1": 5}, {"cus_1": _raw(3)}, "cus_1")
    assert not _stale(6, {"cus_1": 5}, {}, "cus_1")


def test_unversioned_accounts_apply_in_order() -> None:
    assert not _stale(None, {}, {"cus_1": _raw(9)}, "cus_1")
    assert not _stale(1, {}, {"cus_1": _raw(None)}, "cus_1")
    assert not _stale(1, {}, {}, "cus_new")

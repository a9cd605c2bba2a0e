"""Row mapping, batching and the live ledger view of the ClickHouse sink (no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from streambill.analytics.batch import Batch
from streambill.analytics.ledger_view import LedgerView
from streambill.analytics.migrate import load_migrations
from streambill.analytics.rows import (
    TABLE_SPECS,
    CommissionRow,
    LedgerRow,
    alert_row,
    commission_row,
    deadletter_row,
    ledger_entry_json,
    ledger_row,
    usage_row,
)
from streambill.analytics.sink import SINK_TOPICS, map_message
from streambill.errors import InvalidEvent, InvalidJson
from streambill.streams import topics


def ledger_msg(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "entry_id": "e-1",
        "source_event_id": "call-1",
        "source_topic": topics.USAGE,
        "customer_id": "cus_1",
        "reseller_id": "res_1",
        "kind": "usage",
        "meter": "call_minutes",
        "quantity": "1.5",
        "amount_micros": -225000,
        "balance_micros": 19775000,
        "currency": "EUR",
        "seq": 2,
        "occurred_at": "2026-11-25T11:00:00+01:00",
        "applied_at": "2026-11-25T10:00:00.123456+00:00",
    }
    entry.update(overrides)
    return entry


def raw(obj: Any) -> bytes:
    return orjson.dumps(obj)


def test_ledger_row_keeps_money_as_int_and_quantity_as_decimal() -> None:
    row = ledger_row(raw(ledger_msg()))
    assert row.amount_micros == -225000 and isinstance(row.amount_micros, int)
    assert row.quantity == Decimal("1.500000000")
    assert row.quantity_text == "1.5"
    assert row.occurred_at == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert row.applied_at.microsecond == 123456


def test_ledger_row_of_a_topup_has_null_meter_and_zero_quantity() -> None:
    row = ledger_row(raw(ledger_msg(kind="topup", meter=None, quantity=None, amount_micros=5)))
    assert (row.meter, row.quantity_text, row.quantity) == (None, None, Decimal(0))


def test_ledger_json_round_trips_the_contract_shape() -> None:
    msg = ledger_msg()
    out = ledger_entry_json(ledger_row(raw(msg)))
    assert out["quantity"] == "1.5"
    assert out["occurred_at"] == "2026-11-25T10:00:00+00:00"
    assert {k: v for k, v in out.items() if not k.endswith("_at")} == {
        k: v for k, v in msg.items() if not k.endswith("_at")
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"seq": 0},
        {"amount_micros": "lots"},
        {"currency": "JPY"},
        {"entry_id": None},
        {"quantity": "abc"},
        {"quantity": "1e40"},
    ],
)
def test_bad_ledger_entries_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        ledger_row(raw(ledger_msg(**overrides)))


def test_quantity_is_rounded_half_even_to_nine_places_never_float() -> None:
    row = ledger_row(raw(ledger_msg(quantity="0.0000000025")))
    assert row.quantity == Decimal("0.000000002")
    assert row.quantity_text == "0.0000000025"


def test_usage_row_follows_the_worker_rules() -> None:
    msg = {
        "event_id": "call-1",
        "customer_id": "cus_1",
        "meter": "call_minutes",
        "quantity": 1.1,
        "occurred_at": "2026-11-25T10:00:00+00:00",
        "attributes": {"call_id": "8812"},
    }
    row = usage_row(raw(msg), 3, 77)
    assert row.quantity == Decimal("1.1") and row.quantity_text == "1.1"
    assert orjson.loads(row.attributes) == {"call_id": "8812"}
    assert (row.kafka_partition, row.kafka_offset) == (3, 77)
    with pytest.raises(InvalidJson):
        usage_row(b'{"event_id": ', 0, 0)
    with pytest.raises(InvalidEvent):
        usage_row(raw({**msg, "quantity": "-1"}), 0, 0)


def test_alert_and_deadletter_rows() -> None:
    alert = alert_row(
        raw(
            {
                "alert_id": "a1",
                "customer_id": "cus_1",
                "reseller_id": None,
                "kind": "low_balance",
                "details": {"balance_micros": 1},
                "created_at": "2026-11-25T10:00:00+00:00",
            }
        )
    )
    assert alert.details == '{"balance_micros":1}' and alert.reseller_id is None
    letter = deadletter_row(
        raw(
            {
                "topic": topics.USAGE,
                "partition": 2,
                "offset": 9,
                "key": None,
                "value": "{oops",
                "error_code": "invalid_json",
                "reason": "payload is not valid JSON",
                "failed_at": "2026-11-25T10:00:00+00:00",
            }
        )
    )
    assert (letter.topic, letter.partition, letter.offset, letter.value) == (
        topics.USAGE,
        2,
        9,
        "{oops",
    )


def test_map_message_skips_and_counts_what_it_cannot_map() -> None:
    spec = TABLE_SPECS[topics.USAGE]
    name, labels = "streambill_sink_invalid_messages_total", {"topic": topics.USAGE}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    assert map_message(spec, 0, 1, b"not json") is None
    assert map_message(spec, 0, 2, None) is None
    assert REGISTRY.get_sample_value(name, labels) == before + 2


def _row(entry_id: str, seq: int, customer: str = "cus_1", balance: int = 0) -> LedgerRow:
    return ledger_row(
        raw(ledger_msg(entry_id=entry_id, seq=seq, customer_id=customer, balance_micros=balance))
    )


def test_batch_dedups_by_id_and_tracks_offsets_of_skipped_messages() -> None:
    spec = TABLE_SPECS[topics.LEDGER]
    batch = Batch()
    batch.add(topics.LEDGER, 0, 10, spec, _row("a", 1))
    batch.add(topics.LEDGER, 0, 11, spec, _row("a", 1))
    batch.add(topics.LEDGER, 0, 12, spec, None)
    batch.add(topics.LEDGER, 1, 5, spec, _row("b", 1, "cus_2"))
    assert batch.row_count == 2 and batch.messages == 4
    assert batch.duplicates == {"ledger": 1}
    assert batch.next_offsets() == {(topics.LEDGER, 0): 13, (topics.LEDGER, 1): 6}
    assert [r.entry_id for r in batch.tables()["ledger"]] == ["a", "b"]


def test_batch_is_due_by_rows_or_by_age() -> None:
    spec = TABLE_SPECS[topics.LEDGER]
    batch = Batch()
    assert not batch.due(1, 1.0)
    batch.add(topics.LEDGER, 0, 0, spec, _row("a", 1))
    assert batch.started_at is not None
    assert not batch.due(2, 1.0, now=batch.started_at + 0.5)
    assert batch.due(2, 1.0, now=batch.started_at + 1.0)
    assert batch.due(1, 1.0, now=batch.started_at)


def test_batch_absorb_keeps_both_batches() -> None:
    spec = TABLE_SPECS[topics.LEDGER]
    first, later = Batch(), Batch()
    first.add(topics.LEDGER, 0, 0, spec, _row("a", 1))
    later.add(topics.LEDGER, 0, 1, spec, _row("b", 2))
    later.add(topics.LEDGER, 0, 2, spec, _row("a", 1))
    first.absorb(later)
    assert [r.entry_id for r in first.tables()["ledger"]] == ["a", "b"]
    assert first.next_offsets() == {(topics.LEDGER, 0): 3}


def test_ledger_view_moves_forward_only_and_tracks_pending() -> None:
    view = LedgerView()
    r2, r1 = _row("b", 2, balance=200), _row("a", 1, balance=100)
    view.apply(r2)
    view.apply(r1)
    balance = view.balance("cus_1")
    assert balance is not None and (balance.seq, balance.balance_micros) == (2, 200)
    assert [r.entry_id for r in view.pending("cus_1")] == ["b", "a"]
    view.flushed([r2])
    assert [r.entry_id for r in view.pending("cus_1")] == ["a"]
    view.flushed([r1])
    assert view.pending("cus_1") == [] and view.pending_count == 0
    assert view.balance("nobody") is None


def test_ledger_view_is_bounded() -> None:
    view = LedgerView(max_customers=2)
    for i in range(3):
        view.apply(_row(f"e{i}", 1, customer=f"cus_{i}"))
    assert len(view) == 2 and view.balance("cus_2") is None


def test_packaged_migrations_are_ordered_and_idempotent_sql() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        for statement in migration.statements():
            # Idempotent: creations guarded, settings set to a value (twice is once).
            idempotent = "IF NOT EXISTS" in statement or " MODIFY SETTING " in statement
            assert idempotent, statement[:60]
            assert "Float" not in statement


def _mapped(mapper: Any, obj: dict[str, Any]) -> Any:
    try:
        return ("row", mapper(obj))
    except InvalidEvent as exc:
        return ("error", exc.code, exc.message)


_LEDGER_VARIANTS: list[dict[str, Any]] = [
    {},
    {"reseller_id": None},
    {"meter": None, "quantity": None, "kind": "topup"},
    {"quantity": "0.0000000025"},
    {"quantity": "abc"},
    {"quantity": "1e40"},
    {"quantity": 1.5},
    {"seq": 0},
    {"seq": "2"},
    {"seq": True},
    {"amount_micros": "lots"},
    {"amount_micros": 1.0},
    {"balance_micros": "19775000"},
    {"currency": "JPY"},
    {"currency": "eur"},
    {"entry_id": None},
    {"entry_id": 7},
    {"customer_id": ""},
    {"occurred_at": "2026-11-25T10:00:00Z"},
    {"occurred_at": "2026-11-25T10:00:00"},
    {"applied_at": "2026-11-25 10:00:00+00:00"},
    {"applied_at": "yesterday"},
    {"extra_field": [1, 2]},
]


@pytest.mark.parametrize("change", _LEDGER_VARIANTS)
def test_fast_ledger_mapping_matches_the_model(change: dict[str, Any]) -> None:
    from streambill.analytics.rows import _fast_ledger_row, _ledger_row_from_model

    obj = {**ledger_msg(), **change}
    assert _mapped(lambda o: ledger_row(raw(o)), obj) == _mapped(_ledger_row_from_model, obj)
    if change == {}:
        assert _fast_ledger_row(obj) is not None  # the common case takes the fast path


def test_a_ledger_entry_without_reseller_id_is_rejected_by_the_model() -> None:
    entry = ledger_msg()
    del entry["reseller_id"]
    with pytest.raises(InvalidEvent, match="reseller_id"):
        ledger_row(raw(entry))


@pytest.mark.parametrize(
    "change",
    [{}, {"attributes": {}}, {"attributes": {"a": [1, {"b": None}]}}, {"quantity": "2.50"}],
)
def test_usage_rows_are_the_same_on_the_fast_path_and_the_model(change: dict[str, Any]) -> None:
    from streambill.streams.events import usage_from_obj

    msg = {
        "event_id": "call-1",
        "customer_id": "cus_1",
        "meter": "call_minutes",
        "quantity": "1.5",
        "occurred_at": "2026-11-25T10:00:00+00:00",
        **change,
    }
    event = usage_from_obj(msg)
    row = usage_row(raw(msg), 1, 2)
    assert row.quantity_text == str(event.quantity)
    assert row.occurred_at == event.occurred_at
    assert orjson.loads(row.attributes) == event.attributes


# --- commission entries -------------------------------------------------------------------


def commission_msg(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "entry_id": "led-9:accrual",
        "reseller_id": "res_1",
        "customer_id": "cus_1",
        "month": "2026-11",
        "kind": "accrual",
        "amount_micros": 55000000,
        "currency": "EUR",
        "base_micros": 1100000000,
        "base_delta_micros": 200000000,
        "tier": 1,
        "rate": "0.275",
        "position": 17,
        "month_commission_micros": 302500000,
        "month_bonus_micros": 5000000,
        "source_entry_id": "led-9",
        "source_kind": "usage",
        "source_amount_micros": 216000000,
        "source_currency": "USD",
        "fx_rate": "0.9259259259",
        "fx_date": "2026-11-20",
        "occurred_at": "2026-11-03T11:00:00+01:00",
        "created_at": "2026-11-03T10:00:00.123456+00:00",
    }
    entry.update(overrides)
    return entry


def test_commission_row_keeps_every_field_exactly() -> None:
    row = commission_row(raw(commission_msg()), 3, 9)
    assert row.amount_micros == 55000000 and type(row.amount_micros) is int
    assert (row.rate, row.fx_rate) == ("0.275", "0.9259259259")
    assert row.fx_date == date(2026, 11, 20)
    assert row.occurred_at == datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    assert row.created_at.microsecond == 123456
    assert (row.tier, row.position, row.month) == (1, 17, "2026-11")
    same_currency = commission_row(
        raw(commission_msg(source_currency="EUR", fx_rate=None, fx_date=None))
    )
    assert (same_currency.fx_rate, same_currency.fx_date) == (None, None)
    # another currency's customer, nothing converted: a top-up's fixed bonus
    topup = {"kind": "bonus_new_customer", "source_kind": "topup"}
    bonus = commission_row(raw(commission_msg(**topup, fx_rate=None, fx_date=None)))
    assert (bonus.source_currency, bonus.fx_rate, bonus.fx_date) == ("USD", None, None)


@pytest.mark.parametrize(
    "overrides",
    [
        {"entry_id": ""},
        {"entry_id": None},
        {"reseller_id": 7},
        {"month": "2026-13"},
        {"month": "2026-1"},
        {"month": "2026-11-01"},
        {"kind": "payout"},
        {"amount_micros": 1.5},
        {"amount_micros": "55000000"},
        {"amount_micros": True},
        {"base_delta_micros": 2**63},
        {"currency": "JPY"},
        {"source_currency": "eur"},
        {"tier": -1},
        {"tier": 256},
        {"tier": "1"},
        {"position": 0},
        {"position": 17.0},
        {"rate": 0.275},
        {"rate": "1.5"},
        {"rate": "-0.1"},
        {"rate": "NaN"},
        {"rate": "lots"},
        {"fx_rate": None},
        {"fx_date": None},
        {"fx_rate": "0"},
        {"fx_date": "20261120"},
        {"fx_date": "2026-11-31"},
        {"source_currency": "EUR"},  # same currency: fx must be null
        {"occurred_at": "2026-11-03T10:00:00"},
        {"created_at": "yesterday"},
        {"source_kind": None},
        {"customer_id": None},
        {"customers": []},
        {"customers": {"cus_1": 100_000_000, "cus_2": 100_000_001}},  # not the base delta
        {"customers": {"": 200_000_000}},
        {"customers": {"cus_1": 200_000_000.0}},
        {"facts": -1},
        {"facts": True},
        {"facts": 2**32},
    ],
)
def test_bad_commission_entries_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        commission_row(raw(commission_msg(**overrides)))


def test_an_accrual_slice_keeps_each_customers_part() -> None:
    parts = {"cus_1": 150_000_000, "cus_2": 70_000_000, "cus_3": -20_000_000}
    row = commission_row(raw(commission_msg(customer_id="", customers=parts, facts=41)))
    assert (row.customer_id, row.customers, row.facts) == ("", parts, 41)
    single = commission_row(raw(commission_msg()))  # the brief's shape: one ledger entry
    assert (single.customer_id, single.customers, single.facts) == ("cus_1", {}, 1)


def test_commission_entries_land_in_the_commissions_table_once_per_entry_id() -> None:
    spec = TABLE_SPECS[topics.COMMISSIONS]
    assert (spec.table, spec.mapper) == ("commissions", commission_row)
    batch = Batch()
    first = commission_row(raw(commission_msg()))
    batch.add(topics.COMMISSIONS, 0, 1, spec, first)
    batch.add(topics.COMMISSIONS, 0, 2, spec, commission_row(raw(commission_msg())))
    batch.add(topics.COMMISSIONS, 0, 3, spec, map_message(spec, 0, 3, b'{"kind": "accrual"}'))
    assert batch.tables() == {"commissions": [first]}
    assert batch.duplicates == {"commissions": 1}
    assert batch.next_offsets() == {(topics.COMMISSIONS, 0): 4}


def test_the_sink_consumes_and_inserts_every_mapped_topic() -> None:
    from streambill.analytics.sink import _TABLE_ORDER

    assert set(SINK_TOPICS) == set(TABLE_SPECS) and topics.COMMISSIONS in SINK_TOPICS
    assert sorted(_TABLE_ORDER) == sorted(spec.table for spec in TABLE_SPECS.values())


def test_commission_row_columns_are_the_tables_columns() -> None:
    (migration,) = [m for m in load_migrations() if m.name.endswith("commissions")]
    body = migration.sql.split("(", 1)[1].rsplit(")", 1)[0]
    declared = re.findall(r"^\s+`?(\w+)`?\s+\w", body, flags=re.MULTILINE)
    assert tuple(c for c in declared if c != "inserted_at") == CommissionRow._fields

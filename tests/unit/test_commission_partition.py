"""The commissions agent's partition state: replays from a checkpoint, parking, markers.

The agent's correctness rests on one property: a facts partition replayed from any
checkpoint emits exactly the entries (ids and amounts) an uninterrupted run emits, so the
sink's collapse by entry id leaves every month exact. These tests cut a generated partition
at random places, restore the state from its JSON, replay from there (with the records
after the cut delivered again), and compare.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streambill.engine.balances import Message, Record
from streambill.engine.commissions import (
    FACTS,
    MARKER_KEY,
    CommissionPartition,
    plan_marker,
    rates_marker,
    tick_marker,
)
from streambill.streams import topics

START = datetime(2026, 10, 28, tzinfo=UTC)


def marker(m: Message) -> tuple[bytes, bytes]:
    assert m.value is not None
    return m.key, m.value


def ledger(
    n: int, customer: str, seq: int, kind: str, micros: int, at: datetime, cur: str
) -> bytes:
    return orjson.dumps(
        {
            "entry_id": f"le-{n}",
            "customer_id": customer,
            "reseller_id": "res_1",
            "kind": kind,
            "meter": "call_minutes" if kind == "usage" else None,
            "quantity": str(Decimal(micros) / 100_000) if kind == "usage" else None,
            "amount_micros": -micros if kind in ("usage", "refund", "chargeback") else micros,
            "currency": cur,
            "seq": seq,
            "occurred_at": at.isoformat(),
        }
    )


@st.composite
def partitions(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """(key, value) records of one facts partition: a plan marker, rates, facts of three
    customers (one in USD), ticks, and a later plan change."""
    records: list[tuple[bytes, bytes]] = [marker(plan_marker("res_1", 1, "EUR", None))]
    rates = [(START.date() - timedelta(days=1), "USD", Decimal("1.08"))]
    records.append(marker(rates_marker(rates, 0)))
    seqs = {"c1": 0, "c2": 0, "c3": 0}
    for n in range(draw(st.integers(5, 60))):
        customer = draw(st.sampled_from(sorted(seqs)))
        seqs[customer] += 1
        kind = draw(st.sampled_from(["usage"] * 6 + ["refund", "topup"]))
        micros = draw(st.integers(1, 900)) * 1_000_000 + draw(st.integers(0, 999_999))
        at = START + timedelta(hours=draw(st.integers(0, 24 * 40)))
        currency = "USD" if customer == "c3" else "EUR"
        records.append((b"res_1", ledger(n, customer, seqs[customer], kind, micros, at, currency)))
        if draw(st.integers(0, 9)) == 0:
            records.append(marker(tick_marker(0)))
        if n == 30:
            plan = {"tiers": [{"from": "0", "rate": "0.2"}, {"from": "2000", "rate": "0.4"}]}
            records.append(marker(plan_marker("res_1", 2, "EUR", plan)))
        if draw(st.integers(0, 15)) == 0:  # a record forwarded twice (a re-key replay)
            records.append(records[-1])
    records.append(marker(tick_marker(0)))
    # The re-key stage sends a batch's entries of one reseller as one JSON array: merge runs
    # of facts at random.
    merged: list[tuple[bytes, bytes]] = []
    for key, value in records:
        if key != MARKER_KEY and merged and merged[-1][0] != MARKER_KEY and draw(st.booleans()):
            before = merged[-1][1]
            head = before[1:-1] if before.startswith(b"[") else before
            merged[-1] = (key, b"[" + head + b"," + value + b"]")
        else:
            merged.append((key, value))
    return merged


def run(records: list[tuple[bytes, bytes]], cuts: list[int]) -> dict[str, dict[str, object]]:
    """Entries by id after handling ``records``, restarting from a checkpoint at each cut
    (the records after it are delivered again from the checkpoint's offset)."""
    out: dict[str, dict[str, object]] = {}
    part = CommissionPartition(0, 1)
    offset = 0
    pending = sorted(set(cuts))
    while offset < len(records):
        key, value = records[offset]
        for m in part.handle(Record(FACTS, 0, offset, key, value), "t"):
            assert m.topic == topics.COMMISSIONS
            doc = orjson.loads(m.value or b"")
            doc.pop("created_at")
            if doc["entry_id"] in out:
                assert out[doc["entry_id"]] == doc, "a replay changed an entry"
            out[doc["entry_id"]] = doc
        offset += 1
        if pending and offset == pending[0]:
            pending.pop(0)
            state = orjson.loads(orjson.dumps(part.to_state()))
            part = CommissionPartition.from_state(0, 1, state)
            offset = part.next_offset
    return out


@settings(max_examples=150, deadline=None)
@given(records=partitions(), data=st.data())
def test_a_replay_from_any_checkpoint_emits_the_same_entries(
    records: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    whole = run(records, [])
    cuts = data.draw(st.lists(st.integers(1, len(records)), max_size=4))
    assert run(records, cuts) == whole
    # The entries of each month sum to the month's figures in the last entry of the month.
    by_month: dict[str, list[dict[str, object]]] = {}
    for doc in whole.values():
        by_month.setdefault(str(doc["month"]), []).append(doc)
    for docs in by_month.values():
        last = max(docs, key=lambda d: int(str(d["position"])))
        commission = sum(
            int(str(d["amount_micros"])) for d in docs if d["kind"] in ("accrual", "true_up")
        )
        bonus = sum(
            int(str(d["amount_micros"])) for d in docs if str(d["kind"]).startswith("bonus")
        )
        assert commission == last["month_commission_micros"]
        assert bonus == last["month_bonus_micros"]


def test_a_fact_without_a_rate_waits_for_one_and_keeps_its_place() -> None:
    part = CommissionPartition(0, 1)
    handle = part.handle
    handle(Record(FACTS, 0, 0, MARKER_KEY, plan_marker("res_1", 1, "EUR", None).value), "t")
    at = datetime(2026, 11, 10, 12, tzinfo=UTC)
    assert (
        handle(
            Record(FACTS, 0, 1, b"res_1", ledger(1, "c3", 1, "usage", 10_800_000, at, "USD")), "t"
        )
        == []
    )
    # An EUR fact of the same reseller behind it waits too: order is kept.
    assert (
        handle(
            Record(FACTS, 0, 2, b"res_1", ledger(2, "c1", 1, "usage", 1_000_000, at, "EUR")), "t"
        )
        == []
    )
    assert part.parked_count == 2
    rate = rates_marker([(at.date() - timedelta(days=3), "USD", Decimal("1.08"))], 0)
    handle(Record(FACTS, 0, 3, MARKER_KEY, rate.value), "t")
    assert part.parked_count == 0
    out = [
        orjson.loads(m.value or b"")
        for m in handle(Record(FACTS, 0, 4, MARKER_KEY, tick_marker(0).value), "t")
    ]
    usd = next(d for d in out if d["source_currency"] == "USD")
    assert usd["base_delta_micros"] == 10_000_000  # 10.80 USD at 1.08 per euro
    assert usd["fx_rate"] == "0.9259259259" and usd["fx_date"] == "2026-11-07"
    assert sum(d["base_delta_micros"] for d in out) == 11_000_000


def test_a_plan_change_restates_the_month_at_the_new_rates() -> None:
    part = CommissionPartition(0, 1)
    part.handle(Record(FACTS, 0, 0, MARKER_KEY, plan_marker("res_1", 1, "EUR", None).value), "t")
    at = datetime(2026, 11, 10, 12, tzinfo=UTC)
    part.handle(
        Record(FACTS, 0, 1, b"res_1", ledger(1, "c1", 1, "usage", 100_000_000, at, "EUR")), "t"
    )
    doubled = {"tiers": [{"from": "0", "rate": "0.5"}]}
    part.handle(Record(FACTS, 0, 2, MARKER_KEY, plan_marker("res_1", 2, "EUR", doubled).value), "t")
    part.handle(
        Record(FACTS, 0, 3, b"res_1", ledger(2, "c1", 2, "usage", 100_000_000, at, "EUR")), "t"
    )
    # A stale marker (an older version, written twice by two owners) changes nothing.
    part.handle(Record(FACTS, 0, 4, MARKER_KEY, plan_marker("res_1", 1, "EUR", None).value), "t")
    part.handle(
        Record(FACTS, 0, 5, b"res_1", ledger(3, "c1", 3, "usage", 100_000_000, at, "EUR")), "t"
    )
    month = part.books["res_1"].month("2026-11")
    assert month.base_micros == 0  # the open slice is booked when it closes
    out = part.handle(Record(FACTS, 0, 6, MARKER_KEY, tick_marker(0).value), "t")
    accrual = orjson.loads(out[-1].value or b"")
    assert (accrual["kind"], accrual["amount_micros"], accrual["facts"]) == (
        "accrual",
        150_000_000,
        3,
    )
    assert accrual["customers"] == {"c1": 300_000_000}
    assert month.base_micros == 300_000_000
    assert month.commission_micros == 150_000_000  # 50% of the whole month's 300.00
    assert [t.rate for t in part.books["res_1"].plan.tiers] == [Decimal("0.5")]
    assert part.books["res_1"].plan.currency == "EUR" and part.plan_versions["res_1"] == 2


def test_bad_records_are_dead_lettered_with_their_reason() -> None:
    part = CommissionPartition(0, 1)
    out = part.handle(Record(FACTS, 0, 7, b"res_1", b"{not json"), "t")
    assert [m.topic for m in out] == [topics.DEADLETTER]
    letter = orjson.loads(out[0].value or b"")
    assert letter["error_code"] == "invalid_event" and letter["offset"] == 7
    out = part.handle(Record(FACTS, 0, 8, MARKER_KEY, b'{"marker":"nonsense"}'), "t")
    assert "unknown marker" in orjson.loads(out[0].value or b"")["reason"]

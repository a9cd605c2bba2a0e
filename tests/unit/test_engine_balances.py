"""The balances engine: rating, exactly-once effects, parking, dead letters, alerts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streambill.engine.balances import BalanceEngine, Message, Outputs, Record, partition_for
from streambill.streams import topics
from streambill.streams.events import AccountEvent, decode_account

PARTITIONS = 4
NOW = 1_764_064_800.0


def account(cid: str = "cus_1", **extra: Any) -> AccountEvent:
    doc = {
        "account_id": cid,
        "kind": "customer",
        "parent_id": "res_1",
        "name": "Praxis Dr. Weber",
        "currency": "EUR",
        "status": "active",
        "prices": [{"meter": "call_minutes", "unit_price": "0.15"}],
        "auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"},
        "updated_at": "2026-11-25T10:00:00+00:00",
    }
    doc.update(extra)
    return decode_account(orjson.dumps(doc))


class Accounts(dict[str, AccountEvent]):
    pass


def make_engine(*accs: AccountEvent, retry_s: float = 60.0) -> BalanceEngine:
    return BalanceEngine(
        partitions=PARTITIONS,
        accounts=Accounts({a.account_id: a for a in accs}),
        balances={},
        dedup={},
        unknown_customer_retry_s=retry_s,
        dedup_window_s=8 * 86400,
    )


class Feed:
    """Assigns offsets per topic partition like a broker would."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def rec(self, topic: str, doc: dict[str, Any] | bytes, key: str | None = None) -> Record:
        value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        cid = key if key is not None else (doc.get("customer_id") if isinstance(doc, dict) else "x")
        partition = partition_for(str(cid).encode(), PARTITIONS)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        return Record(topic, partition, offset, str(cid).encode(), value)


def usage(event_id: str, qty: str = "1.5", cid: str = "cus_1", meter: str = "call_minutes") -> dict:
    return {
        "event_id": event_id,
        "customer_id": cid,
        "meter": meter,
        "quantity": qty,
        "occurred_at": "2026-11-25T10:00:00+00:00",
    }


def payment(
    event_id: str, amount: str, kind: str = "topup", cid: str = "cus_1", cur: str = "EUR"
) -> dict:
    return {
        "event_id": event_id,
        "customer_id": cid,
        "kind": kind,
        "amount": amount,
        "currency": cur,
        "occurred_at": "2026-11-25T10:00:00+00:00",
        "provider": "stripe",
        "provider_ref": event_id,
    }


def of_topic(out: Outputs, topic: str) -> list[dict]:
    return [orjson.loads(m.value) for m in out.first if m.topic == topic and m.value]


def test_usage_is_rated_half_even_and_payments_move_the_balance() -> None:
    engine, feed = make_engine(account()), Feed()
    out = engine.process(
        [
            feed.rec(topics.PAYMENTS, payment("pi_1", "20.00")),
            feed.rec(topics.USAGE, usage("call-1", "1.5")),
            feed.rec(topics.PAYMENTS, payment("re_1", "1.00", "refund")),
            feed.rec(topics.PAYMENTS, payment("adj_1", "-0.25", "adjustment")),
            feed.rec(topics.PAYMENTS, payment("cb_1", "0.50", "chargeback")),
        ],
        NOW,
    )
    entries = of_topic(out, topics.LEDGER)
    assert [e["amount_micros"] for e in entries] == [
        20_000_000,
        -225_000,
        -1_000_000,
        -250_000,
        -500_000,
    ]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[-1]["balance_micros"] == 18_025_000
    assert entries[1]["quantity"] == "1.5" and entries[1]["meter"] == "call_minutes"
    assert out.applied == 5 and out.dead_letters == 0
    # the state value written last is what a restarted worker recovers
    (state_msg,) = [m for m in out.state if m.key == b"cus_1"]
    assert orjson.loads(state_msg.value)["b"] == 18_025_000


def test_producer_duplicate_of_an_event_id_is_ignored() -> None:
    engine, feed = make_engine(account()), Feed()
    first = engine.process([feed.rec(topics.USAGE, usage("call-1"))], NOW)
    again = engine.process([feed.rec(topics.USAGE, usage("call-1"))], NOW + 6 * 86400)
    assert first.applied == 1
    assert again.applied == 0 and again.duplicates == 1
    assert of_topic(again, topics.LEDGER) == []


def test_redelivered_offset_is_skipped() -> None:
    engine, feed = make_engine(account()), Feed()
    rec = feed.rec(topics.USAGE, usage("call-1"))
    engine.process([rec], NOW)
    out = engine.process([rec], NOW)
    assert out.redelivered == 1 and out.applied == 0


def test_crash_between_phases_replays_to_identical_entries() -> None:
    engine, feed = make_engine(account()), Feed()
    recs = [feed.rec(topics.USAGE, usage(f"call-{i}", "0.7")) for i in range(5)]
    before = dict(engine.balances)
    out1 = engine.process(recs, NOW)
    # Phase 1 landed (dedup records kept), phase 2 (balance value) was lost in the crash.
    engine.balances.clear()
    engine.balances.update(before)
    out2 = engine.process(recs, NOW + 1)
    ids1 = [(e["entry_id"], e["seq"], e["balance_micros"]) for e in of_topic(out1, topics.LEDGER)]
    ids2 = [(e["entry_id"], e["seq"], e["balance_micros"]) for e in of_topic(out2, topics.LEDGER)]
    assert ids1 == ids2 and len(ids1) == 5


def test_bad_inputs_go_to_dead_letters_with_codes_and_neighbours_apply() -> None:
    engine, feed = make_engine(account(), account("cus_usd", currency="USD")), Feed()
    bad = [
        (b"{not json", "invalid_json"),
        (orjson.dumps({"customer_id": "cus_1", "meter": "call_minutes"}), "invalid_event"),
        (orjson.dumps({**usage("w"), "quantity": {"x": 1}}), "invalid_event"),
        (orjson.dumps(usage("neg", "-1")), "invalid_event"),
        (orjson.dumps(usage("sms", meter="sms")), "unknown_meter"),
        (b"x" * (1024 * 1024), "invalid_event"),
    ]
    recs = [feed.rec(topics.USAGE, usage("ok-0"))]
    for raw, _ in bad:
        recs.append(feed.rec(topics.USAGE, raw, key="cus_1"))
        recs.append(feed.rec(topics.USAGE, usage(f"ok-{len(recs)}")))
    recs.append(feed.rec(topics.PAYMENTS, payment("pi_usd", "5.00", cid="cus_usd", cur="EUR")))
    out = engine.process(recs, NOW)
    letters = of_topic(out, topics.DEADLETTER)
    assert [d["error_code"] for d in letters] == [c for _, c in bad] + ["currency_mismatch"]
    assert out.applied == 1 + len(bad)
    assert all(d["value"] and d["reason"] and "offset" in d for d in letters)


def test_unknown_customer_is_parked_then_applied_when_the_account_arrives() -> None:
    accounts = Accounts()
    engine = BalanceEngine(
        partitions=PARTITIONS,
        accounts=accounts,
        balances={},
        dedup={},
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )
    feed = Feed()
    out = engine.process(
        [feed.rec(topics.USAGE, usage("early-1")), feed.rec(topics.USAGE, usage("early-2"))], NOW
    )
    assert out.parked == 2 and out.applied == 0
    owned = set(range(PARTITIONS))
    assert engine.sweep_parked(owned, NOW + 10).applied == 0
    accounts["cus_1"] = account()
    swept = engine.sweep_parked(owned, NOW + 20)
    assert [e["source_event_id"] for e in of_topic(swept, topics.LEDGER)] == ["early-1", "early-2"]
    assert engine.parked_customers == {}


def test_unknown_customer_dead_letters_after_the_retry_window() -> None:
    engine, feed = make_engine(retry_s=60), Feed()
    engine.process([feed.rec(topics.USAGE, usage("lost", cid="cus_x"))], NOW)
    owned = set(range(PARTITIONS))
    assert engine.sweep_parked(owned, NOW + 59).dead_letters == 0
    out = engine.sweep_parked(owned, NOW + 61)
    assert [d["error_code"] for d in of_topic(out, topics.DEADLETTER)] == ["unknown_customer"]


def test_wrongly_partitioned_record_is_rerouted_not_applied() -> None:
    engine = make_engine(account())
    right = partition_for(b"cus_1", PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    out = engine.process([Record(topics.USAGE, wrong, 0, None, orjson.dumps(usage("c")))], NOW)
    assert out.applied == 0 and out.rerouted == 1
    assert out.first == [Message(topics.USAGE, right, b"cus_1", orjson.dumps(usage("c")))]


def test_alerts_fire_once_per_crossing() -> None:
    engine, feed = make_engine(account()), Feed()
    recs = [feed.rec(topics.PAYMENTS, payment("pi_1", "6.00"))]
    recs += [feed.rec(topics.USAGE, usage(f"c{i}", "10")) for i in range(5)]  # 1.50 each
    recs.append(feed.rec(topics.PAYMENTS, payment("pi_2", "20.00")))
    out = engine.process(recs, NOW)
    kinds = [a["kind"] for a in of_topic(out, topics.ALERTS)]
    # 6.00 -> 4.50 (low) -> 3.00 -> 1.50 -> 0.00 (depleted) -> -1.50 -> 18.50 (recovered)
    assert kinds == ["low_balance", "depleted", "recovered"]


@pytest.mark.parametrize("status", ["closed"])
def test_usage_for_a_closed_account_is_dead_lettered(status: str) -> None:
    engine, feed = make_engine(account(status=status)), Feed()
    out = engine.process([feed.rec(topics.USAGE, usage("late"))], NOW)
    assert [d["error_code"] for d in of_topic(out, topics.DEADLETTER)] == ["account_closed"]

"""The balances engine: rating, exactly-once effects, parking, dead letters, alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streambill.engine.balances import BalanceEngine, Message, Outputs, Record, partition_for
from streambill.streams import topics
from streambill.streams.events import AccountEvent, decode_account

PARTITIONS = 4
_OFFSETS = [
    timezone(timedelta(hours=h, minutes=m)) for h, m in ((1, 0), (-3, 0), (5, 30), (-9, -30))
]
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


def run(engine: BalanceEngine, records: list[Record], now: float) -> Outputs:
    """Process a batch and confirm it, as the agent does once every phase is published."""
    out = engine.process(records, now)
    engine.confirm(out.batch_no)
    return out


def sweep(engine: BalanceEngine, owned: set[int], now: float) -> Outputs:
    out = engine.sweep_parked(owned, now)
    engine.confirm(out.batch_no)
    return out


def of_topic(out: Outputs, topic: str) -> list[dict]:
    return [orjson.loads(m.value) for m in out.first if m.topic == topic and m.value]


def test_usage_is_rated_half_even_and_payments_move_the_balance() -> None:
    engine, feed = make_engine(account()), Feed()
    out = run(
        engine,
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
    assert orjson.loads(state_msg.value or b"null")["b"] == 18_025_000


def test_producer_duplicate_of_an_event_id_is_ignored() -> None:
    engine, feed = make_engine(account()), Feed()
    first = run(engine, [feed.rec(topics.USAGE, usage("call-1"))], NOW)
    again = run(engine, [feed.rec(topics.USAGE, usage("call-1"))], NOW + 6 * 86400)
    assert first.applied == 1
    assert again.applied == 0 and again.duplicates == 1
    assert of_topic(again, topics.LEDGER) == []


def test_redelivered_offset_is_skipped() -> None:
    engine, feed = make_engine(account()), Feed()
    rec = feed.rec(topics.USAGE, usage("call-1"))
    run(engine, [rec], NOW)
    out = run(engine, [rec], NOW)
    assert out.redelivered == 1 and out.applied == 0


def entries_of(out: Outputs) -> list[tuple[str, int, int]]:
    return [(e["entry_id"], e["seq"], e["balance_micros"]) for e in of_topic(out, topics.LEDGER)]


def test_crash_before_the_state_write_replays_without_loss() -> None:
    engine, feed = make_engine(account()), Feed()
    calls = [feed.rec(topics.USAGE, usage(f"call-{i}", "0.7")) for i in range(3)]
    pays = [feed.rec(topics.PAYMENTS, payment(f"pi_{i}", "1.00")) for i in range(2)]
    engine.process(calls + pays, NOW)  # dedup records landed; state and ledger did not
    engine.balances.clear()
    # The replay interleaves the two topics differently: other seqs, same effects.
    replay = run(engine, pays + calls, NOW + 1)
    # Stale dedup records name positions the state never consumed: nothing is skipped.
    assert replay.applied == 5 and replay.duplicates == 0
    assert [e[1] for e in entries_of(replay)] == [1, 2, 3, 4, 5]
    assert entries_of(replay)[-1][2] == 2_000_000 - 3 * 105_000


def test_crash_after_the_state_write_re_emits_the_same_entries() -> None:
    engine, feed = make_engine(account()), Feed()
    recs = [feed.rec(topics.USAGE, usage(f"call-{i}", "0.7")) for i in range(5)]
    lost = engine.process(recs, NOW)  # states landed with their outbox; the ledger did not
    restarted = BalanceEngine(
        partitions=PARTITIONS,
        accounts=engine.accounts,
        balances=engine.balances,
        dedup=engine.dedup,
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )
    replay = run(restarted, recs, NOW + 1)  # the source records come again
    assert replay.applied == 0 and replay.redelivered == 5
    redelivered = restarted.redeliver_outboxes(set(range(PARTITIONS)), NOW + 2)
    assert entries_of(redelivered) == [] or entries_of(redelivered) == entries_of(lost)
    assert entries_of(replay) == entries_of(lost)  # re-emitted when the state was loaded
    # Once confirmed, the outbox is dropped and never emitted again.
    later = run(restarted, [feed.rec(topics.USAGE, usage("call-9", "1"))], NOW + 3)
    assert [e[0] for e in entries_of(later)] == [entries_of(later)[0][0]]
    assert entries_of(later)[0][1] == 6


def test_a_state_that_landed_without_its_dedup_records_still_stops_producer_duplicates() -> None:
    # Dedup records and states are published in one phase: a crash can keep the states and
    # lose the dedup records. The state's outbox names the events; the records are rebuilt.
    engine, feed = make_engine(account()), Feed()
    recs = [feed.rec(topics.USAGE, usage(f"call-{i}", "0.7")) for i in range(3)]
    recs.append(feed.rec(topics.PAYMENTS, payment("pi_1", "1.00")))
    lost = engine.process(recs, NOW)
    keys = sorted(m.key for m in lost.dedup)
    assert keys == sorted(
        [f"cus_1\x1fu\x1fcall-{i}".encode() for i in range(3)] + [b"cus_1\x1fp\x1fpi_1"]
    )
    restarted = BalanceEngine(
        partitions=PARTITIONS,
        accounts=engine.accounts,
        balances=engine.balances,
        dedup={},  # the dedup changelog never got this batch's records
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )
    retries = [  # producer retries: same event ids, new offsets
        feed.rec(topics.USAGE, usage("call-1", "0.7")),
        feed.rec(topics.PAYMENTS, payment("pi_1", "1.00")),
    ]
    out = run(restarted, retries, NOW + 1)
    assert out.applied == 0 and out.duplicates == 2
    # The records are published again with this batch and are back in the table, with the
    # same seq and an offset at or after the one each event was applied from.
    assert sorted(m.key for m in out.dedup) == keys
    truth = {m.key: orjson.loads(m.value or b"") for m in lost.dedup}
    consumed = {b"u": recs[2].offset, b"p": recs[3].offset}  # what the state had consumed
    for m in out.dedup:
        seq, _at, offset = orjson.loads(m.value or b"")
        assert seq == truth[m.key][0]
        assert truth[m.key][2] <= offset <= consumed[m.key.split(b"\x1f")[1]]
    assert set(restarted.dedup) == set(keys)
    assert entries_of(out) == entries_of(lost)  # the outbox came back too
    # Once confirmed, nothing is rebuilt again: the next batch publishes only its own.
    later = run(restarted, [feed.rec(topics.USAGE, usage("call-9", "1"))], NOW + 2)
    assert [m.key for m in later.dedup] == [b"cus_1\x1fu\x1fcall-9"]


def test_outbox_is_re_emitted_for_customers_not_touched_again() -> None:
    engine, feed = make_engine(account(), account("cus_2")), Feed()
    lost = engine.process([feed.rec(topics.USAGE, usage("a", cid="cus_2"))], NOW)
    restarted = BalanceEngine(
        partitions=PARTITIONS,
        accounts=engine.accounts,
        balances=engine.balances,
        dedup=engine.dedup,
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )
    out = restarted.redeliver_outboxes(set(range(PARTITIONS)), NOW + 1)
    assert entries_of(out) == entries_of(lost)
    restarted.confirm(out.batch_no)
    assert entries_of(restarted.redeliver_outboxes(set(range(PARTITIONS)), NOW + 2)) == []


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
    out = run(engine, recs, NOW)
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
    out = run(
        engine,
        [feed.rec(topics.USAGE, usage("early-1")), feed.rec(topics.USAGE, usage("early-2"))],
        NOW,
    )
    assert out.parked == 2 and out.applied == 0
    owned = set(range(PARTITIONS))
    assert sweep(engine, owned, NOW + 10).applied == 0
    accounts["cus_1"] = account()
    swept = sweep(engine, owned, NOW + 20)
    assert [e["source_event_id"] for e in of_topic(swept, topics.LEDGER)] == ["early-1", "early-2"]
    assert engine.parked_customers == {}


def test_unknown_customer_dead_letters_after_the_retry_window() -> None:
    engine, feed = make_engine(retry_s=60), Feed()
    run(engine, [feed.rec(topics.USAGE, usage("lost", cid="cus_x"))], NOW)
    owned = set(range(PARTITIONS))
    assert sweep(engine, owned, NOW + 59).dead_letters == 0
    out = sweep(engine, owned, NOW + 61)
    assert [d["error_code"] for d in of_topic(out, topics.DEADLETTER)] == ["unknown_customer"]


def test_wrongly_partitioned_record_is_rerouted_not_applied() -> None:
    engine = make_engine(account())
    right = partition_for(b"cus_1", PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    out = run(engine, [Record(topics.USAGE, wrong, 0, None, orjson.dumps(usage("c")))], NOW)
    assert out.applied == 0 and out.rerouted == 1
    assert out.first == [Message(topics.USAGE, right, b"cus_1", orjson.dumps(usage("c")))]


def test_alerts_fire_once_per_crossing() -> None:
    engine, feed = make_engine(account()), Feed()
    recs = [feed.rec(topics.PAYMENTS, payment("pi_1", "6.00"))]
    recs += [feed.rec(topics.USAGE, usage(f"c{i}", "10")) for i in range(5)]  # 1.50 each
    recs.append(feed.rec(topics.PAYMENTS, payment("pi_2", "20.00")))
    out = run(engine, recs, NOW)
    kinds = [a["kind"] for a in of_topic(out, topics.ALERTS)]
    # 6.00 -> 4.50 (low) -> 3.00 -> 1.50 -> 0.00 (depleted) -> -1.50 -> 18.50 (recovered)
    assert kinds == ["low_balance", "depleted", "recovered"]


@pytest.mark.parametrize("status", ["closed"])
def test_usage_for_a_closed_account_is_dead_lettered(status: str) -> None:
    engine, feed = make_engine(account(status=status)), Feed()
    out = run(engine, [feed.rec(topics.USAGE, usage("late"))], NOW)
    assert [d["error_code"] for d in of_topic(out, topics.DEADLETTER)] == ["account_closed"]


# -- the hot-path decoders decide exactly like the pydantic models ---------------------------
_USAGE_VARIANTS: list[dict[str, Any]] = [
    {},
    {"quantity": "0"},
    {"quantity": 3},
    {"quantity": 1.1},
    {"quantity": " 2.50 "},
    {"quantity": "1e3"},
    {"quantity": "1000000000"},
    {"quantity": "1000000000.000001"},
    {"quantity": "-0"},
    {"quantity": "-1"},
    {"quantity": "NaN"},
    {"quantity": "inf"},
    {"quantity": True},
    {"quantity": None},
    {"quantity": ""},
    {"quantity": [1]},
    {"quantity": "1" * 41},
    {"event_id": ""},
    {"event_id": "e" * 128},
    {"event_id": "e" * 129},
    {"event_id": 5},
    {"customer_id": None},
    {"meter": "m" * 65},
    {"meter": ""},
    {"attributes": None},
    {"attributes": []},
    {"attributes": {"n": 1, "deep": {"x": [1, 2]}}},
    {"extra": "ignored"},
    {"occurred_at": "2026-11-25T10:00:00Z"},
    {"occurred_at": "2026-11-25T10:00:00.5+01:30"},
    {"occurred_at": "2026-11-25T10:00:00.123456-05:00"},
    {"occurred_at": "2026-11-25T10:00:00.000000+00:00"},
    {"occurred_at": "2026-11-25T10:00:00-00:00"},
    {"occurred_at": "2026-11-25T10:00:00.1234567+00:00"},
    {"occurred_at": "2026-11-25T10:00:00"},
    {"occurred_at": "2026-11-25 10:00:00+00:00"},
    {"occurred_at": "2026-02-30T10:00:00+00:00"},
    {"occurred_at": "2026-11-25T24:00:00+00:00"},
    {"occurred_at": "2026-11-25T10:00:60+00:00"},
    {"occurred_at": "2026-11-25T10:00:00+24:00"},
    {"occurred_at": "2026-11-25"},
    {"occurred_at": "20261125T100000Z"},
    {"occurred_at": 1764064800},
    {"occurred_at": None},
    {"occurred_at": "2026-11-25T10:00:00.123456+05:30"},
    {"occurred_at": "2026-11-25T10:00:00.000000+00:00"},
    {"occurred_at": "2026-11-25T10:00:00.120+00:00"},
    {"occurred_at": "2026-11-25T10:00:00-00:00"},
    {"occurred_at": "2026-11-25T10:00:00-03:00"},
    {"occurred_at": "2026-11-25 10:00:00+00:00"},
    {"occurred_at": "2026-11-25T10:00:00.1234Z"},
    {"occurred_at": "2026-11-25T10:00:00.123456Z"},
]


def _outcome(fn: Any, obj: dict[str, Any]) -> tuple[str, Any]:
    from streambill.errors import StreambillError

    try:
        ev = fn(obj)
        signed = ev.signed_micros() if hasattr(ev, "signed_micros") else None
    except StreambillError as exc:
        return ("error", (exc.code, exc.message))
    fields = {"event_id", "customer_id", "meter", "kind", "currency"}
    values = {k: getattr(ev, k) for k in fields if hasattr(ev, k)}
    values["occurred_at"] = ev.occurred_at.isoformat()
    values["occurred_text"] = ev.occurred_text  # what the ledger entry carries
    for name in ("quantity", "amount"):
        if hasattr(ev, name):
            values[name] = str(getattr(ev, name))
    values["signed"] = signed
    return ("ok", values)


@pytest.mark.parametrize("change", _USAGE_VARIANTS)
def test_fast_usage_decoder_matches_the_model(change: dict[str, Any]) -> None:
    from streambill.streams.events import FastUsage, fast_usage, usage_from_obj

    obj = {**usage("call-1"), **change}
    assert _outcome(fast_usage, obj) == _outcome(usage_from_obj, obj)
    if change == {}:
        assert isinstance(fast_usage(obj), FastUsage)  # the common case takes the fast path


_PAYMENT_VARIANTS: list[dict[str, Any]] = [
    {},
    {"kind": "refund"},
    {"kind": "chargeback", "amount": "0.01"},
    {"kind": "adjustment", "amount": "-3.5"},
    {"kind": "adjustment", "amount": "0"},
    {"kind": "topup", "amount": "0"},
    {"kind": "refund", "amount": "-1"},
    {"kind": "gift"},
    {"kind": None},
    {"currency": "JPY"},
    {"currency": "eur"},
    {"amount": 12},
    {"amount": "1e400"},
    {"amount": "abc"},
    {"amount": "0.0000005"},
    {"provider": None, "provider_ref": None},
    {"provider": ""},
    {"provider": "p" * 65},
    {"provider_ref": "r" * 257},
    {"provider_ref": 7},
    {"occurred_at": "2026-11-25T10:00:00Z"},
    {"occurred_at": "yesterday"},
]


@pytest.mark.parametrize("change", _PAYMENT_VARIANTS)
def test_fast_payment_decoder_matches_the_model(change: dict[str, Any]) -> None:
    from streambill.streams.events import FastPayment, fast_payment, payment_from_obj

    obj = {**payment("pi_1", "20.00"), **change}
    assert _outcome(fast_payment, obj) == _outcome(payment_from_obj, obj)
    if change == {}:
        assert isinstance(fast_payment(obj), FastPayment)


def test_compact_account_view_rates_like_the_model() -> None:
    from streambill.streams.events import account_view

    model = account(low_balance_threshold="2.50")
    view = account_view(model)
    for name in ("account_id", "kind", "parent_id", "currency", "status"):
        assert getattr(view, name) == getattr(model, name)
    assert view.price_map == model.price_map
    assert view.low_threshold_micros == model.low_threshold_micros == 2_500_000
    feed = Feed()
    recs = [feed.rec(topics.PAYMENTS, payment("pi_1", "20.00"))]
    recs += [feed.rec(topics.USAGE, usage(f"c{i}", "33.3")) for i in range(4)]
    with_model = make_engine(model).process(recs, NOW)
    with_view = BalanceEngine(
        partitions=PARTITIONS,
        accounts=Accounts({"cus_1": view}),  # type: ignore[dict-item]
        balances={},
        dedup={},
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    ).process(recs, NOW)

    def untagged(out: Outputs) -> list[dict]:
        return [{**orjson.loads(m.value), "t": ""} for m in out.state if m.value]

    assert with_model.first == with_view.first
    assert untagged(with_model) == untagged(with_view)


def test_stored_values_keep_their_format() -> None:
    engine, feed = make_engine(account()), Feed()
    run(engine, [feed.rec(topics.USAGE, usage("call-1"))], NOW)
    (raw,) = engine.dedup.values()
    assert raw == orjson.dumps([1, int(NOW), 0])
    state = orjson.loads(engine.balances["cus_1"])
    assert state["s"] == 1 and state["b"] == -225_000


@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), timezones=st.sampled_from([UTC, *_OFFSETS])),
    digits=st.integers(min_value=0, max_value=6),
    zone=st.sampled_from(["offset", "Z", "-00:00"]),
    sep=st.sampled_from(["T", " "]),
)
@example(moment=datetime(2026, 11, 25, 10, 0, 0, 123400, tzinfo=UTC), digits=4, zone="Z", sep="T")
@example(moment=datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC), digits=6, zone="-00:00", sep="T")
def test_iso_text_equals_isoformat(moment: datetime, digits: int, zone: str, sep: str) -> None:
    from streambill.streams.events import iso_aware, iso_text

    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    offset = moment.isoformat()[-6:]
    if zone != "offset" and offset == "+00:00":
        offset = zone
    text += offset
    parsed = iso_aware(text)
    if parsed is not None:  # forms the fast decoder leaves to the model are not its concern
        assert iso_text(text, parsed) == parsed.isoformat(), text

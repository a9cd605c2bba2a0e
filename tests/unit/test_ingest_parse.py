"""``parse_usage_body``: body shapes, per-event codes and indexes, and the same accept/reject
decisions as the worker's pydantic model (an accepted event is never dead-lettered later)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from streambill.api.ingest import ParsedUsage, RejectedUsage, parse_usage_body
from streambill.errors import InvariantViolation, StreambillError
from streambill.streams.events import MAX_PAYLOAD_BYTES, decode_usage, usage_from_obj

NOW = datetime(2026, 11, 25, 12, 30, 15, 250_000, tzinfo=UTC)
NOW_TEXT = "2026-11-25T12:30:15.250000+00:00"


def usage(event_id: Any = "call-1", cid: str = "cus_1", **change: Any) -> dict[str, Any]:
    event = {
        "event_id": event_id,
        "customer_id": cid,
        "meter": "call_minutes",
        "quantity": "1.5",
        "occurred_at": "2026-11-25T10:00:00+00:00",
        "attributes": {"call_id": "8812"},
    }
    event.update(change)
    return event


def parse(document: Any, **kwargs: Any) -> ParsedUsage:
    return parse_usage_body(orjson.dumps(document), now=NOW, **kwargs)


def batch(*events: Any) -> dict[str, Any]:
    return {"events": list(events)}


def test_a_single_event_is_produced_as_sent() -> None:
    event = usage(extra_field={"kept": True})
    parsed = parse(event)
    assert not parsed.batch
    assert parsed.rejected == []
    [accepted] = parsed.accepted
    assert (accepted.index, accepted.customer_id, accepted.event_id) == (0, "cus_1", "call-1")
    assert orjson.loads(accepted.value) == event  # unknown fields are kept
    assert parsed.records() == [(b"cus_1", accepted.value)]


def test_a_batch_keeps_the_order_and_the_indexes() -> None:
    events = [usage(f"e{i}", cid=f"cus_{i % 3}") for i in range(7)]
    parsed = parse(batch(*events))
    assert parsed.batch
    assert [a.index for a in parsed.accepted] == list(range(7))
    assert [a.event_id for a in parsed.accepted] == [f"e{i}" for i in range(7)]
    assert [key for key, _ in parsed.records()] == [f"cus_{i % 3}".encode() for i in range(7)]
    assert parsed.customer_ids() == {"cus_0", "cus_1", "cus_2"}


def test_mixed_valid_and_invalid_events_report_codes_and_indexes() -> None:
    parsed = parse(
        batch(
            usage("ok-0"),
            usage("bad-qty", quantity="-1"),
            "not an object",
            usage("ok-3"),
            usage(event_id=7),
            usage("bad-time", occurred_at="2026-11-25T10:00:00"),
            None,
        )
    )
    assert [a.index for a in parsed.accepted] == [0, 3]
    got = [(r.index, r.event_id, r.code) for r in parsed.rejected]
    assert got == [
        (1, "bad-qty", "invalid_event"),
        (2, None, "invalid_event"),
        (4, None, "invalid_event"),  # a non-string event_id is not echoed back
        (5, "bad-time", "invalid_event"),
        (6, None, "invalid_event"),
    ]
    assert "quantity" in parsed.rejected[0].message
    assert "str" in parsed.rejected[1].message
    assert parsed.rejected[0].as_dict() == {
        "index": 1,
        "event_id": "bad-qty",
        "code": "invalid_event",
        "message": parsed.rejected[0].message,
    }
    assert parsed.count == 7


def test_an_invalid_single_event_is_rejected_not_raised() -> None:
    parsed = parse(usage(meter=""))
    assert not parsed.batch
    assert parsed.accepted == []
    assert [(r.index, r.code) for r in parsed.rejected] == [(0, "invalid_event")]


def test_duplicate_event_ids_in_one_request_are_accepted() -> None:
    parsed = parse(batch(usage("same"), usage("same")))
    assert [a.index for a in parsed.accepted] == [0, 1]  # the worker deduplicates


@pytest.mark.parametrize("count", [1, 1000])
def test_up_to_max_events_are_accepted(count: int) -> None:
    parsed = parse(batch(*(usage(f"e{i}") for i in range(count))))
    assert len(parsed.accepted) == count


def test_too_many_events() -> None:
    with pytest.raises(StreambillError) as caught:
        parse(batch(*(usage(f"e{i}") for i in range(1001))))
    assert caught.value.code == "too_many_events"
    with pytest.raises(StreambillError) as caught:
        parse(batch(usage("a"), usage("b")), max_events=1)
    assert caught.value.code == "too_many_events"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"event_id": NaN}', "invalid_json"),
        (b'"\\ud800"', "invalid_json"),
        (b"[]", "invalid_event"),
        (b'[{"event_id": "e"}]', "invalid_event"),
        (b'"text"', "invalid_event"),
        (b"null", "invalid_event"),
        (b'{"events": []}', "invalid_event"),
        (b'{"events": null}', "invalid_event"),
        (b'{"events": {"0": {}}}', "invalid_event"),
    ],
)
def test_whole_body_problems_raise(body: bytes, code: str) -> None:
    with pytest.raises(StreambillError) as caught:
        parse_usage_body(body, now=NOW)
    assert caught.value.code == code


def test_a_missing_occurred_at_is_filled_with_now() -> None:
    event = usage()
    del event["occurred_at"]
    parsed = parse(batch(event, usage("null-time", occurred_at=None)))
    [accepted] = parsed.accepted
    assert orjson.loads(accepted.value)["occurred_at"] == NOW_TEXT
    assert decode_usage(accepted.value).occurred_at == NOW
    # null is not "missing": it is an invalid time, as the model says
    assert [(r.index, r.code) for r in parsed.rejected] == [(1, "invalid_event")]


def test_now_keeps_its_offset() -> None:
    event = usage()
    del event["occurred_at"]
    berlin = NOW.astimezone(timezone(timedelta(hours=1)))
    value = parse_usage_body(orjson.dumps(event), now=berlin).accepted[0].value
    assert orjson.loads(value)["occurred_at"] == "2026-11-25T13:30:15.250000+01:00"


def test_a_naive_now_is_a_bug() -> None:
    with pytest.raises(InvariantViolation):
        parse_usage_body(orjson.dumps(usage()), now=datetime(2026, 11, 25))


def test_events_the_worker_would_refuse_by_size_or_depth_are_rejected() -> None:
    big = usage("big", attributes={"blob": "x" * MAX_PAYLOAD_BYTES})
    parsed = parse_usage_body(
        b'{"events": [' + orjson.dumps(big) + b"," + _deep_event(300) + b"]}", now=NOW
    )
    assert parsed.accepted == []
    assert [(r.index, r.event_id, r.code) for r in parsed.rejected] == [
        (0, "big", "invalid_event"),
        (1, "deep", "invalid_event"),
    ]
    assert "exceeds" in parsed.rejected[0].message
    assert "nested" in parsed.rejected[1].message


def _deep_event(levels: int) -> bytes:
    """An event whose attributes nest ``levels`` deep: orjson reads 1,024 levels, writes 254."""
    head = orjson.dumps(usage("deep", attributes={}))[:-3]  # strip the closing "{}}"
    return head + b'{"d":' * levels + b"1" + b"}" * levels + b"}"


def test_reject_customers_moves_events_to_rejected_in_index_order() -> None:
    parsed = parse(batch(usage("a", "cus_1"), usage("b", "cus_2"), "x", usage("c", "cus_1")))
    narrowed = parsed.reject_customers({"cus_1"}, code="not_found", message="unknown customer")
    assert [a.event_id for a in narrowed.accepted] == ["b"]
    assert narrowed.rejected == [
        RejectedUsage(0, "a", "not_found", "unknown customer: cus_1"),
        parsed.rejected[0],
        RejectedUsage(3, "c", "not_found", "unknown customer: cus_1"),
    ]
    assert parsed.reject_customers(set(), code="x", message="y") is parsed


# -- the same decisions as the pydantic model --------------------------------------------------
_TRICKY: list[dict[str, Any]] = [
    {},
    {"quantity": "0"},
    {"quantity": 0},
    {"quantity": 3},
    {"quantity": 1.1},
    {"quantity": 1e-7},
    {"quantity": " 2.50 "},
    {"quantity": "1e3"},
    {"quantity": "1E+9"},
    {"quantity": "1000000000"},
    {"quantity": "1000000000.000001"},
    {"quantity": 12345678901234567890},
    {"quantity": "-0"},
    {"quantity": -0.0},
    {"quantity": "-1"},
    {"quantity": "NaN"},
    {"quantity": "inf"},
    {"quantity": "0x10"},
    {"quantity": "1_000"},
    {"quantity": True},
    {"quantity": None},
    {"quantity": ""},
    {"quantity": [1]},
    {"quantity": {"value": 1}},
    {"quantity": "1" * 41},
    {"event_id": ""},
    {"event_id": " "},
    {"event_id": "e" * 128},
    {"event_id": "e" * 129},
    {"event_id": "é" * 128},
    {"event_id": 5},
    {"event_id": None},
    {"customer_id": None},
    {"customer_id": ""},
    {"customer_id": "c" * 129},
    {"customer_id": ["cus_1"]},
    {"meter": "m" * 64},
    {"meter": "m" * 65},
    {"meter": ""},
    {"meter": 1},
    {"attributes": None},
    {"attributes": []},
    {"attributes": "x"},
    {"attributes": {}},
    {"attributes": {"n": 1, "deep": {"x": [1, 2]}, "f": 1.5}},
    {"extra": "ignored"},
    {"events_total": 3},
    {"occurred_at": "2026-11-25T10:00:00Z"},
    {"occurred_at": "2026-11-25T10:00:00z"},
    {"occurred_at": "2026-11-25T10:00:00.5+01:30"},
    {"occurred_at": "2026-11-25T10:00:00.123456-05:00"},
    {"occurred_at": "2026-11-25T10:00:00.000000+00:00"},
    {"occurred_at": "2026-11-25T10:00:00-00:00"},
    {"occurred_at": "2026-11-25T10:00:00.1234567+00:00"},
    {"occurred_at": "2026-11-25T10:00:00"},
    {"occurred_at": "2026-11-25 10:00:00+00:00"},
    {"occurred_at": "2026-11-25T10:00+00:00"},
    {"occurred_at": "2026-11-25T10:00:00+0100"},
    {"occurred_at": "2026-02-30T10:00:00+00:00"},
    {"occurred_at": "2026-11-25T24:00:00+00:00"},
    {"occurred_at": "2026-11-25T10:00:60+00:00"},
    {"occurred_at": "2026-11-25T10:00:00+24:00"},
    {"occurred_at": "2026-11-25"},
    {"occurred_at": "20261125T100000Z"},
    {"occurred_at": 1764064800},
    {"occurred_at": 1764064800.5},
    {"occurred_at": None},
    {"occurred_at": ""},
    {"occurred_at": "yesterday"},
    {"occurred_at": "2026-11-25T10:00:00.123Z"},
]


def _model_outcome(obj: dict[str, Any]) -> tuple[str, Any]:
    try:
        event = usage_from_obj(obj)
    except StreambillError as exc:
        return ("error", (exc.code, exc.message))
    return ("ok", event)


@pytest.mark.parametrize("change", _TRICKY)
def test_accepts_and_rejects_exactly_like_the_model(change: dict[str, Any]) -> None:
    event = usage(**change)
    outcome = _model_outcome(event)
    parsed = parse(event)
    if outcome[0] == "ok":
        [accepted] = parsed.accepted
        # What the worker will decode from the produced value is the event the model read.
        assert decode_usage(accepted.value) == outcome[1]
        assert (accepted.customer_id, accepted.event_id) == (
            outcome[1].customer_id,
            outcome[1].event_id,
        )
    else:
        [rejected] = parsed.rejected
        assert (rejected.code, rejected.message) == outcome[1]


def test_one_batch_of_every_tricky_input_decides_each_at_its_index() -> None:
    events = [{**usage(f"t{i}"), **change} for i, change in enumerate(_TRICKY)]
    parsed = parse(batch(*events))
    expected_ok = [i for i, e in enumerate(events) if _model_outcome(e)[0] == "ok"]
    assert [a.index for a in parsed.accepted] == expected_ok
    assert len(parsed.accepted) + len(parsed.rejected) == len(_TRICKY)
    assert 10 < len(expected_ok) < len(_TRICKY) - 10  # the set exercises both sides

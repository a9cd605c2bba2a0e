"""Stripe events -> payment events: each payment, refund and dispute becomes exactly one event
id, whichever of Stripe's announcements arrive, in whatever order, however often."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streambill.errors import InvalidEvent
from streambill.payments.stripe_events import major_units, payment_events
from streambill.streams.events import payment_from_obj

CREATED = 1_795_000_000
META = {"customer_id": "cus_1", "reseller_id": "res_1"}


def event(kind: str, obj: dict[str, Any], n: int = 1) -> dict[str, Any]:
    return {"id": f"evt_{kind}_{n}", "type": kind, "created": CREATED, "data": {"object": obj}}


def checkout(status: str = "paid", kind: str = "checkout.session.completed") -> dict[str, Any]:
    session = {
        "id": "cs_1",
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": status,
        "payment_intent": "pi_1",
        "amount_total": 2000,
        "currency": "eur",
        "metadata": META,
    }
    return event(kind, session)


def intent_succeeded() -> dict[str, Any]:
    intent = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 2000,
        "amount_received": 2000,
        "currency": "eur",
        "status": "succeeded",
        "metadata": META,
    }
    return event("payment_intent.succeeded", intent)


def charge_refunded(refunds: list[tuple[str, int, str]]) -> dict[str, Any]:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "currency": "eur",
        "amount": 2000,
        "metadata": META,
        "refunds": {
            "data": [
                {"id": rid, "amount": amount, "currency": "eur", "status": status}
                for rid, amount, status in refunds
            ]
        },
    }
    return event("charge.refunded", charge, len(refunds))


def dispute(kind: str, status: str) -> dict[str, Any]:
    obj = {"id": "dp_1", "amount": 2000, "currency": "eur", "status": status, "metadata": META}
    return event(kind, obj)


def test_every_produced_event_is_a_valid_payment_event() -> None:
    everything = [
        checkout(),
        intent_succeeded(),
        charge_refunded([("re_1", 500, "succeeded")]),
        dispute("charge.dispute.created", "needs_response"),
        dispute("charge.dispute.closed", "won"),
    ]
    produced = [p for e in everything for p in payment_events(e)]
    models = [payment_from_obj(p) for p in produced]
    assert [(m.kind, m.amount, m.event_id) for m in models] == [
        ("topup", Decimal("20.00"), "pi_1"),
        ("topup", Decimal("20.00"), "pi_1"),
        ("refund", Decimal("5.00"), "re_1"),
        ("chargeback", Decimal("20.00"), "dp_1"),
        ("adjustment", Decimal("20.00"), "dp_1:won"),
    ]
    assert all(m.customer_id == "cus_1" and m.currency == "EUR" for m in models)


def test_unpaid_lost_foreign_and_unknown_events_credit_nothing() -> None:
    foreign = intent_succeeded()
    foreign["data"]["object"]["metadata"] = {}
    assert payment_events(checkout(status="unpaid")) == []  # SEPA: the async event follows
    assert payment_events(dispute("charge.dispute.closed", "lost")) == []
    assert payment_events(foreign) == []
    assert payment_events(event("customer.created", {"id": "cus_x"})) == []
    assert payment_events(event("payment_intent.payment_failed", {"id": "pi_2"})) == []


def test_a_sepa_checkout_credits_when_the_async_payment_succeeds() -> None:
    late = checkout(kind="checkout.session.async_payment_succeeded")
    assert [p["event_id"] for p in payment_events(late)] == ["pi_1"]


def test_failed_refunds_take_no_money() -> None:
    produced = payment_events(
        charge_refunded([("re_1", 500, "succeeded"), ("re_2", 700, "failed")])
    )
    assert [(p["event_id"], p["amount"]) for p in produced] == [("re_1", "5.00")]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "payment_intent.succeeded"},
        {"type": 5, "data": {"object": {}}, "created": CREATED},
        event(
            "payment_intent.succeeded",
            {"id": "pi_1", "amount": 0, "currency": "eur", "metadata": META},
        ),
        event(
            "payment_intent.succeeded",
            {"id": "pi_1", "amount": 100, "currency": "jpy", "metadata": META},
        ),
        {**checkout(), "created": "yesterday"},
    ],
)
def test_malformed_events_of_handled_types_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        payment_events(bad)


def test_major_units_is_exact() -> None:
    assert major_units(1, "GBP") == "0.01"
    assert major_units(123456789, "USD") == "1234567.89"


DELIVERIES = [
    checkout(),
    intent_succeeded(),
    charge_refunded([("re_1", 500, "succeeded")]),
    charge_refunded([("re_1", 500, "succeeded"), ("re_2", 300, "succeeded")]),
    dispute("charge.dispute.created", "needs_response"),
    dispute("charge.dispute.closed", "won"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(len(DELIVERIES))), min_size=len(DELIVERIES), max_size=30))
def test_any_order_and_any_repeats_apply_each_money_movement_once(order: list[int]) -> None:
    """Every announcement delivered at least once (Stripe retries), shuffled and repeated;
    the balances agent applies each event id once: the sum is always the same."""
    sequence = [*order, *range(len(DELIVERIES))]  # each at least once, in a random order
    applied: dict[str, int] = {}
    for index in sequence:
        for payment in payment_events(DELIVERIES[index]):
            applied.setdefault(payment["event_id"], payment_from_obj(payment).signed_micros())
    assert applied == {
        "pi_1": 20_000_000,
        "re_1": -5_000_000,
        "re_2": -3_000_000,
        "dp_1": -20_000_000,
        "dp_1:won": 20_000_000,
    }

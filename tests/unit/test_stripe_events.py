"""Stripe events -> payment events: each payment, refund and dispute becomes exactly one event
id, whichever of Stripe's announcements arrive, in whatever order, however often."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streambill.errors import InvalidEvent
from streambill.payments.stripe_events import RefundFact, major_units, money_facts, payment_events
from streambill.streams.events import payment_from_obj
from stripe_objects import stripe_object

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


def test_every_produced_event_is_a_valid_payment_event() -> None:
    produced = [p for e in (checkout(), intent_succeeded()) for p in payment_events(e)]
    models = [payment_from_obj(p) for p in produced]
    assert [(m.kind, m.amount, m.event_id) for m in models] == [
        ("topup", Decimal("20.00"), "pi_1"),
        ("topup", Decimal("20.00"), "pi_1"),
    ]
    assert all(m.customer_id == "cus_1" and m.currency == "EUR" for m in models)


def test_unpaid_foreign_and_unknown_events_credit_nothing() -> None:
    foreign = intent_succeeded()
    foreign["data"]["object"]["metadata"] = {}
    assert payment_events(checkout(status="unpaid")) == []  # SEPA: the async event follows
    assert payment_events(foreign) == []
    assert payment_events(event("customer.created", {"id": "cus_x"})) == []
    assert payment_events(event("payment_intent.payment_failed", {"id": "pi_2"})) == []


def test_a_sepa_checkout_credits_when_the_async_payment_succeeds() -> None:
    late = checkout(kind="checkout.session.async_payment_succeeded")
    assert [p["event_id"] for p in payment_events(late)] == ["pi_1"]


def test_refunds_and_disputes_are_read_from_stripes_own_shapes() -> None:
    """A refund and a dispute as Stripe's examples have them: no metadata, a payment intent
    and a charge; the money is decided against what was recorded (payments/money.py)."""
    refund = stripe_object("refund", id="re_1", amount=500, currency="eur", payment_intent="pi_1")
    dispute = stripe_object(
        "dispute", id="dp_1", amount=2000, currency="eur", payment_intent="pi_1"
    )
    assert refund["metadata"] == {} and dispute["metadata"] == {}
    assert payment_events(event("refund.created", refund)) == []
    (fact,) = money_facts(event("refund.created", refund)) or []
    assert isinstance(fact, RefundFact)
    assert (fact.refund_id, fact.status, fact.amount_minor, fact.currency) == (
        "re_1",
        "succeeded",
        500,
        "EUR",
    )
    assert (fact.payment_intent, fact.charge) == ("pi_1", refund["charge"])
    moves = {
        kind: money_facts(event(kind, dispute))
        for kind in (
            "charge.dispute.created",
            "charge.dispute.funds_withdrawn",
            "charge.dispute.funds_reinstated",
            "charge.dispute.closed",
        )
    }
    assert {k: [getattr(f, "movement", "?") for f in v or []] for k, v in moves.items()} == {
        "charge.dispute.created": [None],
        "charge.dispute.funds_withdrawn": ["withdrawn"],
        "charge.dispute.funds_reinstated": ["reinstated"],
        "charge.dispute.closed": [None],
    }


def test_charge_refunded_lists_its_refunds_only_in_old_shapes() -> None:
    charge = stripe_object("charge", id="ch_1", refunded=True)
    assert charge["refunds"]["data"] == []
    assert money_facts(event("charge.refunded", charge)) is None  # to be listed from the API
    old = stripe_object("refund", id="re_9", amount=300, currency="eur", status="succeeded")
    charge["refunds"]["data"] = [old]
    (fact,) = money_facts(event("charge.refunded", charge)) or []
    assert isinstance(fact, RefundFact) and fact.refund_id == "re_9"


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "re_1", "amount": 0, "currency": "eur", "status": "succeeded"},
        {"id": "re_1", "amount": 100, "currency": "jpy", "status": "succeeded"},
        {"id": "re_1", "amount": 100, "currency": "eur", "status": "lost"},
        {"amount": 100, "currency": "eur", "status": "succeeded"},
    ],
)
def test_malformed_refunds_are_refused(obj: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        money_facts(event("refund.updated", obj))


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
    checkout(kind="checkout.session.async_payment_succeeded"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(len(DELIVERIES))), min_size=len(DELIVERIES), max_size=30))
def test_any_order_and_any_repeats_apply_each_top_up_once(order: list[int]) -> None:
    """Every announcement delivered at least once (Stripe retries), shuffled and repeated;
    each names the PaymentIntent, so one event id: the sum is always the same."""
    sequence = [*order, *range(len(DELIVERIES))]  # each at least once, in a random order
    applied: dict[str, int] = {}
    for index in sequence:
        for payment in payment_events(DELIVERIES[index]):
            applied.setdefault(payment["event_id"], payment_from_obj(payment).signed_micros())
    assert applied == {"pi_1": 20_000_000}

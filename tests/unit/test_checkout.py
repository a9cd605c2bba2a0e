"""Checkout top-ups without a network: amounts and limits, what a Checkout Session asks
Stripe for, labels of saved payment methods, and how Checkout and setup webhooks are read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recorded_stripe import fixture
from streambill.control.models import Tenant, TopupAttempt
from streambill.errors import InvalidEvent, StreambillError
from streambill.payments.checkout import (
    CHECKOUT_TTL,
    AmountOutOfRange,
    check_amount,
    payment_session_params,
    topup_public,
)
from streambill.payments.methods import payment_method_label
from streambill.payments.payer import Payments
from streambill.payments.webhooks import attempt_outcome, setup_done

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def tenant(currency: str = "EUR", reseller: str | None = "res_1") -> Tenant:
    return Tenant(id="cus_1", kind="customer", parent_id=reseller, name="P", currency=currency)


def attempt(kind: str = "checkout", status: str = "open", micros: int = 20_000_000) -> TopupAttempt:
    return TopupAttempt(
        id=f"{'co' if kind == 'checkout' else 'at'}_cus_1_3",
        customer_id="cus_1",
        kind=kind,
        number=3,
        idempotency_key="checkout:cus_1:3",
        amount_micros=micros,
        currency="EUR",
        status=status,
        checkout_session_id="cs_test_1",
        action_url="https://checkout.stripe.com/c/pay/cs_test_1",
        created_at=NOW,
        updated_at=NOW,
        calls=1,
    )


@pytest.mark.parametrize("currency", ["EUR", "USD", "GBP"])
def test_limits_hold_at_their_edges(currency: str) -> None:
    assert check_amount("5.00", currency) == 5_000_000
    assert check_amount("10000", currency) == 10_000_000_000
    for amount in ("4.99", "10000.01", "0", "999999999999.999999"):
        with pytest.raises(AmountOutOfRange) as caught:
            check_amount(amount, currency)
        assert caught.value.code == "amount_out_of_range"
    with pytest.raises(StreambillError) as fine:
        check_amount("12.345", currency)
    assert fine.value.code == "invalid_request"


def test_payment_session_asks_for_the_amount_in_minor_units_with_metadata() -> None:
    params = payment_session_params(
        tenant(),
        attempt(micros=12_340_000),
        stripe_customer="cus_S1",
        save=True,
        success_url="https://a.example/s",
        cancel_url="https://a.example/c",
        expires_at=NOW + CHECKOUT_TTL,
    )
    metadata = {"customer_id": "cus_1", "attempt_id": "co_cus_1_3", "topup": "checkout"}
    metadata["reseller_id"] = "res_1"
    assert params["line_items"] == [
        {
            "quantity": 1,
            "price_data": {
                "currency": "eur",
                "unit_amount": 1234,
                "product_data": {"name": "Guthaben-Aufladung / Top-up"},
            },
        }
    ]
    assert params["metadata"] == params["payment_intent_data"]["metadata"] == metadata
    assert params["payment_intent_data"]["setup_future_usage"] == "off_session"
    assert params["payment_method_types"] == ["card", "sepa_debit"]
    assert (params["mode"], params["customer"], params["client_reference_id"]) == (
        "payment",
        "cus_S1",
        "co_cus_1_3",
    )
    assert params["expires_at"] == int((NOW + timedelta(hours=12)).timestamp())
    unsaved = payment_session_params(
        tenant("GBP", reseller=None),
        attempt(),
        stripe_customer="cus_S1",
        save=False,
        success_url="https://a.example/s",
        cancel_url="https://a.example/c",
        expires_at=NOW,
    )
    assert "setup_future_usage" not in unsaved["payment_intent_data"]
    assert "reseller_id" not in unsaved["metadata"]


def test_public_shape_shows_the_checkout_url_only_while_open() -> None:
    shown = topup_public(attempt())
    assert (shown.checkout_url, shown.amount, shown.expires_at) == (
        "https://checkout.stripe.com/c/pay/cs_test_1",
        "20.00",
        NOW + CHECKOUT_TTL,
    )
    assert topup_public(attempt(status="succeeded")).checkout_url is None
    auto = topup_public(attempt(kind="auto", status="requires_action"))
    assert (auto.checkout_url, auto.expires_at, auto.kind) == (None, None, "auto")
    assert auto.action_url == "https://checkout.stripe.com/c/pay/cs_test_1"


def test_labels_of_recorded_payment_methods() -> None:
    assert payment_method_label(fixture("payment_method_card")) == "Mastercard •••• 4444"
    assert payment_method_label(fixture("payment_method_sepa")) == "SEPA •••• 3000"
    assert payment_method_label({"type": "card", "card": {"brand": "amex"}}) == "American Express"
    assert payment_method_label({"type": "link", "link": {}}) == "Link"


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_1", "type": kind, "created": 1, "data": {"object": obj}}


def test_checkout_events_map_to_attempt_states() -> None:
    session = fixture("checkout_session_payment") | {
        "metadata": {"customer_id": "cus_1", "attempt_id": "co_cus_1_3"},
        "payment_intent": "pi_1",
    }
    cases = {
        ("checkout.session.completed", "paid"): "succeeded",
        ("checkout.session.completed", "unpaid"): "processing",
        ("checkout.session.async_payment_succeeded", "paid"): "succeeded",
        ("checkout.session.async_payment_failed", "unpaid"): "failed",
        ("checkout.session.expired", "unpaid"): "expired",
    }
    for (kind, paid), status in cases.items():
        outcome = attempt_outcome(_event(kind, session | {"payment_status": paid}))
        assert outcome is not None
        assert (outcome.status, outcome.payment_intent_id, outcome.session_id) == (
            status,
            "pi_1",
            session["id"],
        )
    assert attempt_outcome(_event("payment_intent.succeeded", session)) is None
    assert attempt_outcome(_event("checkout.session.completed", session | {"metadata": {}})) is None


def test_setup_events_name_the_payment_method() -> None:
    setup = fixture("checkout_session_setup") | {"metadata": {"customer_id": "cus_1"}}
    done = setup_done(_event("checkout.session.completed", setup))
    assert done is not None
    assert (done.customer_id, done.setup_intent_id, done.payment_method_id) == (
        "cus_1",
        "seti_1QGzS2LkdIwHu7ixq0Vf3Bq9",
        None,
    )
    intent = fixture("setup_intent") | {"metadata": {"customer_id": "cus_1"}}
    done = setup_done(_event("setup_intent.succeeded", intent))
    assert done is not None and done.payment_method_id == "pm_1QGzS4LkdIwHu7ixk2Yb6cVd"
    assert setup_done(_event("setup_intent.succeeded", fixture("setup_intent"))) is None
    with pytest.raises(InvalidEvent):
        setup_done(_event("checkout.session.completed", setup | {"setup_intent": None}))


def test_without_stripe_the_operations_answer_unavailable() -> None:
    payments = Payments(cp=None, gateway=None, public_url="https://x.example")  # type: ignore[arg-type]
    with pytest.raises(StreambillError) as caught:
        payments.stripe()
    assert caught.value.code == "unavailable"

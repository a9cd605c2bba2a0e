"""Checkout top-ups and saved payment methods through a running api, on SQLite and PostgreSQL.

Stripe is a stand-in serving recorded, real-shaped API responses (``tests/fixtures/stripe``;
localstripe has no Checkout) that records what streambill sent; the PUT payment-method flow
runs against localstripe with a card it made. Webhooks are signed with the official library.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stripe
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import stripestub
from apiworld import BACKENDS, STRIPE_WEBHOOK_SECRET, Api, World, build_world, running_api
from pipeline import read_topic
from recorded_stripe import RecordedStripe, nested
from streambill.control.models import TopupAttempt
from streambill.streams.topics import PAYMENTS

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://billing.example.com"


@pytest.fixture(scope="module", params=BACKENDS)
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, World, RecordedStripe, Path]]:
    tmp: Path = tmp_path_factory.mktemp(f"topups-{request.param}")
    with RecordedStripe() as stub:
        extra = stub.env() | {"STREAMBILL_PUBLIC_URL": PUBLIC_URL}
        with running_api(tmp, request.param, extra) as api:
            yield api, build_world(api), stub, tmp


def new_customer(api: Api, currency: str = "EUR", reseller_id: str | None = None) -> str:
    body: dict[str, Any] = {"name": f"Topup {secrets.token_hex(4)}", "currency": currency}
    if reseller_id:
        body["reseller_id"] = reseller_id
    customer_id: str = api.ok("POST", "/v2/customers", body)["id"]
    return customer_id


def customer_key(api: Api, customer_id: str) -> str:
    key: str = api.ok("POST", "/v2/api-keys", {"tenant_id": customer_id, "role": "customer"})["key"]
    return key


def webhook(api: Api, event_type: str, obj: dict[str, Any]) -> Any:
    event = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return deliver(api, orjson.dumps(event))


def deliver(api: Api, payload: bytes) -> Any:
    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), STRIPE_WEBHOOK_SECRET, timestamp=int(time.time())
    )
    return api.client.post(
        "/v2/stripe/webhook",
        content=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def topup(api: Api, token: str, customer_id: str, amount: str = "20.00", **kw: Any) -> Any:
    return api.call("POST", f"/v2/customers/{customer_id}/topups", token, {"amount": amount}, **kw)


def payments_for(api: Api, intent_id: str, expected: int) -> list[dict[str, Any]]:
    messages = read_topic(api.bootstrap, PAYMENTS, until=10**9, timeout_s=4, quiet_s=1)
    found = [m for m in messages if m["event_id"] == intent_id]
    if len(found) < expected:  # the relay may still be on its way
        messages = read_topic(api.bootstrap, PAYMENTS, until=10**9, timeout_s=8, quiet_s=1)
        found = [m for m in messages if m["event_id"] == intent_id]
    return found


def test_customer_starts_a_topup_and_gets_checkout(env: Any) -> None:
    api, world, stub, _ = env
    cus = world.objects["cus_a"]  # EUR, reseller A
    r = api.call(
        "POST",
        f"/v2/customers/{cus}/topups",
        world.tokens["customer_a"],
        {"amount": "20.00", "save_payment_method": True},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "checkout" and body["status"] == "open"
    assert (body["amount"], body["amount_micros"], body["currency"]) == ("20.00", 20_000_000, "EUR")
    assert body["checkout_url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    assert body["checkout_session_id"].startswith("cs_test_")
    assert body["customer_id"] == cus and body["expires_at"] and body["created_at"]
    # what Stripe was asked: the customer, made once under a key from our id
    made = [
        c for c in stub.posts("/v1/customers") if nested(c.form, "metadata") == {"customer_id": cus}
    ]
    assert len(made) == 1 and made[0].idempotency_key == f"customer:{cus}"
    (call,) = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if c.form.get("client_reference_id") == body["id"]
    ]
    form = call.form
    assert form["mode"] == "payment" and form["currency"] == "eur"
    assert (form["payment_method_types[0]"], form["payment_method_types[1]"]) == (
        "card",
        "sepa_debit",
    )
    assert form["line_items[0][price_data][unit_amount]"] == "2000"
    assert form["line_items[0][price_data][currency]"] == "eur"
    assert form["line_items[0][quantity]"] == "1"
    assert "Top-up" in form["line_items[0][price_data][product_data][name]"]
    expected = {
        "customer_id": cus,
        "reseller_id": world.objects["res_a"],
        "attempt_id": body["id"],
        "topup": "checkout",
    }
    assert nested(form, "metadata") == expected
    assert nested(form, "payment_intent_data[metadata]") == expected
    assert form["payment_intent_data[setup_future_usage]"] == "off_session"
    assert form["customer"].startswith("cus_")
    assert form["success_url"].startswith(f"{PUBLIC_URL}/v2/topups/{body['id']}")
    assert call.idempotency_key == f"checkout:{cus}:{body['number']}"
    # read back, alone and in the list
    got = api.ok("GET", f"/v2/topups/{body['id']}", token=world.tokens["customer_a"])
    assert got == body | {"updated_at": got["updated_at"]}
    listed = api.ok("GET", f"/v2/customers/{cus}/topups", token=world.tokens["reseller_a"])
    assert body["id"] in [t["id"] for t in listed["items"]]
    # a GBP account pays by card only; the admin may start it; no saving asked: none sent
    gbp = world.objects["cus_b"]
    r = topup(api, api.stack.admin_key, gbp, "50.00")
    assert r.status_code == 201, r.text
    (gbp_call,) = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if c.form.get("client_reference_id") == r.json()["id"]
    ]
    assert gbp_call.form["currency"] == "gbp" and "payment_method_types[1]" not in gbp_call.form
    assert "payment_intent_data[setup_future_usage]" not in gbp_call.form
    assert nested(gbp_call.form, "metadata")["reseller_id"] == world.objects["res_b"]
    # the second top-up of a customer reuses its Stripe customer
    assert topup(api, world.tokens["customer_a"], cus, "5.00").status_code == 201
    assert (
        len(
            [
                c
                for c in stub.posts("/v1/customers")
                if nested(c.form, "metadata") == {"customer_id": cus}
            ]
        )
        == 1
    )


def test_amounts_outside_the_limits_are_refused(env: Any) -> None:
    api, world, stub, _ = env
    cus = world.objects["cus_d"]  # USD, direct
    before = len(stub.posts("/v1/checkout/sessions"))
    for amount, code in (
        ("4.99", "amount_out_of_range"),
        ("10000.01", "amount_out_of_range"),
        ("0", "amount_out_of_range"),
        ("20.001", "invalid_request"),
        ("-5.00", "invalid_request"),
        ("abc", "invalid_request"),
    ):
        r = topup(api, api.stack.admin_key, cus, amount)
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), (amount, r.text)
    assert len(stub.posts("/v1/checkout/sessions")) == before
    for amount in ("5.00", "10000.00"):
        assert topup(api, api.stack.admin_key, cus, amount).status_code == 201


def test_idempotency_key_gives_the_same_attempt_and_one_session(env: Any) -> None:
    api, _, stub, _ = env
    cus = new_customer(api)
    token = customer_key(api, cus)
    key = {"Idempotency-Key": f"order-{secrets.token_hex(4)}"}
    first = topup(api, token, cus, "25.00", headers=key)
    again = topup(api, token, cus, "25.00", headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    sessions = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if nested(c.form, "metadata").get("customer_id") == cus
    ]
    assert len(sessions) == 1
    other = topup(api, token, cus, "30.00", headers=key)
    assert (other.status_code, other.json()["error"]["code"]) == (409, "conflict")
    # Stripe does not answer: recorded as unknown, 503; the retry under the same key calls
    # Stripe again under the same idempotency key and gets the session
    key2 = {"Idempotency-Key": f"order-{secrets.token_hex(4)}"}
    stub.unreachable = 1
    lost = topup(api, token, cus, "40.00", headers=key2)
    assert (lost.status_code, lost.json()["error"]["code"]) == (503, "payment_provider_unavailable")
    (pending,) = [
        t for t in api.ok("GET", f"/v2/customers/{cus}/topups")["items"] if t["amount"] == "40.00"
    ]
    assert pending["status"] == "unknown" and pending["checkout_url"] is None
    retried = topup(api, token, cus, "40.00", headers=key2)
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == pending["id"] and retried.json()["status"] == "open"
    calls = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if nested(c.form, "metadata").get("attempt_id") == pending["id"]
    ]
    assert len(calls) == 2 and len({c.idempotency_key for c in calls}) == 1
    assert len(api.ok("GET", f"/v2/customers/{cus}/topups")["items"]) == 2


def test_other_tenants_get_404_and_service_keys_403(env: Any) -> None:
    api, world, _, _ = env
    cus = world.objects["cus_a"]
    mine = topup(api, world.tokens["customer_a"], cus).json()
    for principal in ("reseller_b", "customer_b"):
        token = world.tokens[principal]
        assert topup(api, token, cus).status_code == 404
        assert api.call("GET", f"/v2/topups/{mine['id']}", token).status_code == 404
        assert api.call("GET", f"/v2/customers/{cus}/topups", token).status_code == 404
        r = api.call("POST", f"/v2/customers/{cus}/payment-methods/setup", token, {})
        assert r.status_code == 404
    service = world.tokens["service_a"]
    assert topup(api, service, cus).status_code == 403
    assert api.call("GET", f"/v2/topups/{mine['id']}", service).status_code == 200
    assert api.call("GET", "/v2/topups/co_ghost_1", world.tokens["customer_a"]).status_code == 404


def test_completed_checkout_settles_the_attempt_and_credits_once(env: Any) -> None:
    api, world, stub, _ = env
    cus = world.objects["cus_a"]
    attempt = topup(api, world.tokens["customer_a"], cus, "20.00").json()
    session = stub.sessions[attempt["checkout_session_id"]]
    intent = f"pi_{secrets.token_hex(12)}"
    paid = session | {"status": "complete", "payment_status": "paid", "payment_intent": intent}
    payload = orjson.dumps(
        {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "data": {"object": paid},
        }
    )
    first, repeat = deliver(api, payload), deliver(api, payload)
    assert first.json() == {"received": True, "duplicate": False, "payments": 1}
    assert repeat.json()["duplicate"] is True
    got = api.ok("GET", f"/v2/topups/{attempt['id']}")
    assert (got["status"], got["payment_intent_id"], got["failure_code"]) == (
        "succeeded",
        intent,
        None,
    )
    # an expiry announced late changes nothing
    webhook(api, "checkout.session.expired", session | {"status": "expired"})
    assert api.ok("GET", f"/v2/topups/{attempt['id']}")["status"] == "succeeded"
    (payment,) = payments_for(api, intent, 1)
    assert payment | {"occurred_at": None} == {
        "event_id": intent,
        "customer_id": cus,
        "kind": "topup",
        "amount": "20.00",
        "currency": "EUR",
        "occurred_at": None,
        "provider": "stripe",
        "provider_ref": intent,
    }


def test_sepa_processing_then_succeeded_failed_and_expired(env: Any) -> None:
    api, world, stub, _ = env
    cus = world.objects["cus_a"]
    token = world.tokens["customer_a"]
    sepa = topup(api, token, cus, "30.00").json()
    session = stub.sessions[sepa["checkout_session_id"]]
    intent = f"pi_{secrets.token_hex(12)}"
    unpaid = session | {"status": "complete", "payment_status": "unpaid", "payment_intent": intent}
    assert webhook(api, "checkout.session.completed", unpaid).json()["payments"] == 0
    assert api.ok("GET", f"/v2/topups/{sepa['id']}")["status"] == "processing"
    done = unpaid | {"payment_status": "paid"}
    assert webhook(api, "checkout.session.async_payment_succeeded", done).json()["payments"] == 1
    assert api.ok("GET", f"/v2/topups/{sepa['id']}")["status"] == "succeeded"
    assert len(payments_for(api, intent, 1)) == 1

    failing = topup(api, token, cus, "31.00").json()
    session = stub.sessions[failing["checkout_session_id"]]
    lost = session | {
        "status": "complete",
        "payment_status": "unpaid",
        "payment_intent": f"pi_{secrets.token_hex(8)}",
    }
    webhook(api, "checkout.session.completed", lost)
    assert webhook(api, "checkout.session.async_payment_failed", lost).json()["payments"] == 0
    got = api.ok("GET", f"/v2/topups/{failing['id']}")
    assert (got["status"], got["failure_code"]) == ("failed", "async_payment_failed")

    left = topup(api, token, cus, "32.00").json()
    session = stub.sessions[left["checkout_session_id"]]
    webhook(api, "checkout.session.expired", session | {"status": "expired"})
    got = api.ok("GET", f"/v2/topups/{left['id']}")
    assert (got["status"], got["checkout_url"]) == ("expired", None)


def test_setup_mode_saves_the_payment_method_label(env: Any) -> None:
    api, world, stub, _ = env
    cus = new_customer(api, "EUR", world.objects["res_a"])
    token = customer_key(api, cus)
    r = api.call("POST", f"/v2/customers/{cus}/payment-methods/setup", token, {})
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["checkout_url"].startswith("https://checkout.stripe.com/")
    (call,) = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if c.form.get("mode") == "setup" and nested(c.form, "metadata").get("customer_id") == cus
    ]
    assert call.form["currency"] == "eur" and call.form["payment_method_types[1]"] == "sepa_debit"
    assert nested(call.form, "setup_intent_data[metadata]")["customer_id"] == cus
    assert api.ok("GET", f"/v2/customers/{cus}")["payment_method"] is None
    session = stub.sessions[link["checkout_session_id"]] | {"status": "complete"}
    # Stripe unreachable while the method is read back: 503, so Stripe delivers it again
    payload = orjson.dumps(
        {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "data": {"object": session},
        }
    )
    stub.unreachable = 1
    failed = deliver(api, payload)
    assert (failed.status_code, failed.json()["error"]["code"]) == (
        503,
        "payment_provider_unavailable",
    )
    assert deliver(api, payload).json()["duplicate"] is False
    assert api.ok("GET", f"/v2/customers/{cus}", token=token)["payment_method"] == {
        "label": "Mastercard •••• 4444"
    }
    # a SetupIntent confirmed with Stripe.js announces itself as setup_intent.succeeded
    intent = {
        "id": f"seti_{secrets.token_hex(8)}",
        "object": "setup_intent",
        "status": "succeeded",
        "customer": session["customer"],
        "payment_method": "pm_1QGzT9LkdIwHu7ixSepa3000",
        "metadata": {"customer_id": cus},
    }
    assert webhook(api, "setup_intent.succeeded", intent).status_code == 200
    customer = api.ok("GET", f"/v2/customers/{cus}")
    assert customer["payment_method"] == {"label": "SEPA •••• 3000"}
    assert "pm_" not in orjson.dumps(customer).decode()
    # removing it
    assert api.call("DELETE", f"/v2/customers/{cus}/payment-method", token).status_code == 204
    assert api.ok("GET", f"/v2/customers/{cus}")["payment_method"] is None
    audit = api.ok("GET", f"/v2/admin/audit?target={cus}")
    actions = [a["action"] for a in audit["items"]]
    assert actions.count("customer.payment_method") == 2
    assert "customer.payment_method.remove" in actions


def _insert_auto_attempt(api: Api, tmp: Path, customer_id: str, status: str) -> str:
    url = api.database_url or f"sqlite:///{tmp / 'control.db'}"
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    attempt_id = f"at_{customer_id}_{secrets.randbelow(10**6)}"
    now = datetime.now(UTC)
    try:
        with Session(engine) as session, session.begin():
            session.add(
                TopupAttempt(
                    id=attempt_id,
                    customer_id=customer_id,
                    kind="auto",
                    number=int(attempt_id.rsplit("_", 1)[1]),
                    idempotency_key=f"autotopup:{attempt_id}",
                    amount_micros=15_000_000,
                    currency="EUR",
                    status=status,
                    payment_intent_id=f"pi_{secrets.token_hex(10)}",
                    created_at=now,
                    updated_at=now,
                    calls=1,
                    failure_code="authentication_required",
                    action_url=f"{PUBLIC_URL}/v2/topups/{attempt_id}/checkout",
                )
            )
    finally:
        engine.dispose()
    return attempt_id


def test_requires_action_link_pays_the_auto_topup(env: Any) -> None:
    api, world, stub, tmp = env
    cus = world.objects["cus_a"]
    attempt_id = _insert_auto_attempt(api, tmp, cus, "requires_action")
    path = f"/v2/topups/{attempt_id}/checkout"
    owner = world.tokens["customer_a"]
    first = api.call("GET", path, owner)
    assert first.status_code == 303, first.text
    location = first.headers["location"]
    assert location.startswith("https://checkout.stripe.com/c/pay/")
    (call,) = [
        c
        for c in stub.posts("/v1/checkout/sessions")
        if nested(c.form, "metadata").get("attempt_id") == attempt_id
    ]
    assert nested(call.form, "metadata") == {
        "customer_id": cus,
        "reseller_id": world.objects["res_a"],
        "attempt_id": attempt_id,
        "topup": "auto",
    }
    assert call.form["line_items[0][price_data][unit_amount]"] == "1500"
    # still open: the same session again, no second one
    assert api.call("GET", path, owner).headers["location"] == location
    assert (
        len(
            [
                c
                for c in stub.posts("/v1/checkout/sessions")
                if nested(c.form, "metadata").get("attempt_id") == attempt_id
            ]
        )
        == 1
    )
    # the customer's dashboard session cookie works too
    email = f"owner-{secrets.token_hex(4)}@example.com"
    api.ok(
        "POST",
        "/v2/users",
        {"email": email, "password": "a-long-password-1", "role": "customer", "tenant_id": cus},
    )
    login = api.client.post(
        "/v2/auth/login", json={"email": email, "password": "a-long-password-1"}
    )
    assert login.status_code == 200, login.text
    session_cookie = {"streambill_session": login.json()["token"]}
    with httpx.Client(base_url=api.base_url, cookies=session_cookie, timeout=30) as browser:
        by_cookie = browser.get(path)
    assert (by_cookie.status_code, by_cookie.headers.get("location")) == (303, location)
    # others: 404 as for a ghost; service keys 403; a Checkout top-up has nothing to pay here
    for principal in ("customer_b", "reseller_b"):
        assert api.call("GET", path, world.tokens[principal]).status_code == 404
    assert api.call("GET", path, world.tokens["service_a"]).status_code == 403
    plain = topup(api, owner, cus).json()
    r = api.call("GET", f"/v2/topups/{plain['id']}/checkout", owner)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict")
    # paying it settles the auto attempt with the new PaymentIntent
    session = stub.sessions[location.split("/")[-1].split("#")[0]]
    intent = f"pi_{secrets.token_hex(12)}"
    paid = session | {"status": "complete", "payment_status": "paid", "payment_intent": intent}
    assert webhook(api, "checkout.session.completed", paid).json()["payments"] == 1
    got = api.ok("GET", f"/v2/topups/{attempt_id}", token=owner)
    assert (got["kind"], got["status"], got["payment_intent_id"]) == ("auto", "succeeded", intent)
    assert got["action_url"].endswith(path)
    assert api.call("GET", path, owner).status_code == 409


def test_graphql_create_topup(env: Any) -> None:
    api, world, _, _ = env
    cus = world.objects["cus_a"]
    query = (
        'mutation($id: String!) { createTopup(customerId: $id, amount: "12.50",'
        " savePaymentMethod: true) { id customerId kind status amount amountMicros currency"
        " checkoutUrl checkoutSessionId expiresAt createdAt } }"
    )
    r = api.call(
        "POST", "/graphql", world.tokens["customer_a"], {"query": query, "variables": {"id": cus}}
    )
    data = r.json()["data"]["createTopup"]
    assert (data["kind"], data["status"], data["amount"], data["amountMicros"]) == (
        "checkout",
        "open",
        "12.50",
        12_500_000,
    )
    assert data["checkoutUrl"].startswith("https://checkout.stripe.com/")
    r = api.call(
        "POST", "/graphql", world.tokens["customer_b"], {"query": query, "variables": {"id": cus}}
    )
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["NOT_FOUND"]
    low = query.replace("12.50", "1.00")
    r = api.call(
        "POST", "/graphql", world.tokens["customer_a"], {"query": low, "variables": {"id": cus}}
    )
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["AMOUNT_OUT_OF_RANGE"]


@pytest.fixture(scope="module", params=BACKENDS)
def with_localstripe(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, str]]:
    tmp: Path = tmp_path_factory.mktemp(f"topups-localstripe-{request.param}")
    with stripestub.localstripe(tmp) as base:
        extra = {
            "STREAMBILL_STRIPE_API_KEY": stripestub.API_KEY,
            "STREAMBILL_STRIPE_API_BASE": base,
        }
        with running_api(tmp, request.param, extra) as api:
            yield api, base


def test_put_payment_method_attaches_a_localstripe_card(with_localstripe: tuple[Api, str]) -> None:
    api, base = with_localstripe
    sc = stripestub.client(base)
    cus = new_customer(api)
    token = customer_key(api, cus)
    card: Any = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    pm = sc.v1.payment_methods.create(params={"type": "card", "card": card})
    r = api.call("PUT", f"/v2/customers/{cus}/payment-method", token, {"payment_method_id": pm.id})
    assert r.status_code == 200, r.text
    assert r.json()["payment_method"] == {"label": "Visa •••• 4242"}
    attached = sc.v1.payment_methods.retrieve(pm.id)
    assert attached.customer is not None
    owner = sc.v1.customers.retrieve(str(attached.customer))
    assert owner.metadata is not None and owner.metadata["customer_id"] == cus
    # the same card again is fine; one of another Stripe customer, or none at all, is not
    again = api.call(
        "PUT", f"/v2/customers/{cus}/payment-method", token, {"payment_method_id": pm.id}
    )
    assert again.status_code == 200
    _, foreign_pm = stripestub.saved_card(sc, "4242424242424242", "someone-else")
    for pm_id in (foreign_pm, "pm_does_not_exist"):
        r = api.call(
            "PUT", f"/v2/customers/{cus}/payment-method", token, {"payment_method_id": pm_id}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_payment_method"), r.text
    assert api.ok("GET", f"/v2/customers/{cus}")["payment_method"] == {"label": "Visa •••• 4242"}

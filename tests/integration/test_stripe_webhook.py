"""Stripe webhooks through the api and a worker: 1,000 events, each delivered three times,
shuffled, five at once, credit exactly 1,000 times; 400 forged, tampered, expired or
future-dated requests credit nothing. Signatures are made by the official ``stripe`` library."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stripe

from apiworld import STRIPE_WEBHOOK_SECRET, Api, running_api
from pipeline import read_topic
from streambill.streams.topics import PAYMENTS

pytestmark = pytest.mark.integration

CUSTOMERS = 10
EVENTS = 1000


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("stripe-webhook")
    with running_api(tmp, "sqlite") as running:
        running.stack.start_worker()
        yield running


def intent_event(n: int, customer_id: str) -> bytes:
    event = {
        "id": f"evt_{n:05d}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": f"pi_{n:05d}",
                "object": "payment_intent",
                "amount": 100,
                "amount_received": 100,
                "currency": "eur",
                "status": "succeeded",
                "metadata": {"customer_id": customer_id},
            }
        },
    }
    return orjson.dumps(event)


def signed(payload: bytes, secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=at if at is not None else int(time.time())
    )
    return header


def post(client: httpx.Client, payload: bytes, header: str) -> httpx.Response:
    return client.post(
        "/v2/stripe/webhook",
        content=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def test_each_event_credits_once_and_bad_signatures_never(api: Api) -> None:
    customers = [
        api.ok("POST", "/v2/customers", {"name": f"Stripe {n}", "currency": "EUR"})["id"]
        for n in range(CUSTOMERS)
    ]
    payloads = [intent_event(n, customers[n % CUSTOMERS]) for n in range(EVENTS)]
    deliveries = [p for p in payloads for _ in range(3)]
    random.Random(7).shuffle(deliveries)
    bad: list[tuple[bytes, str]] = []
    # 400 s: still outside the 300 s tolerance when they are sent, after the good deliveries.
    now = int(time.time())
    for n in range(100):
        forged = intent_event(10_000 + n, customers[0])
        bad.append((forged, signed(forged, secret=f"whsec_forged_{n}")))
        tampered = intent_event(20_000 + n, customers[0])
        bad.append((tampered.replace(b'"amount":100', b'"amount":999'), signed(tampered)))
        expired = intent_event(30_000 + n, customers[0])
        bad.append((expired, signed(expired, at=now - 400 - n)))
        future = intent_event(40_000 + n, customers[0])
        bad.append((future, signed(future, at=now + 400 + n)))
    with httpx.Client(base_url=api.base_url, timeout=30) as client, ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda p: post(client, p, signed(p)), deliveries))
        refused = list(pool.map(lambda pair: post(client, *pair), bad))
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    assert sum(not a.json()["duplicate"] for a in answers) == EVENTS
    assert sum(a.json()["payments"] for a in answers) == EVENTS
    accepted = {(r.status_code, r.text[:80]) for r in refused if r.status_code != 400}
    assert not accepted
    assert {r.json()["error"]["code"] for r in refused} == {"invalid_signature"}
    # The payments topic holds one event per PaymentIntent; the ledger credited each once.
    payments = read_topic(api.bootstrap, PAYMENTS, until=EVENTS, timeout_s=60)
    ids = [p["event_id"] for p in payments]
    assert len(ids) == len(set(ids)) == EVENTS
    deadline = time.monotonic() + 60
    balances: list[Any] = []
    while time.monotonic() < deadline:
        balances = [api.ok("GET", f"/v2/customers/{c}/balance") for c in customers]
        if all(b["seq"] >= EVENTS // CUSTOMERS for b in balances):
            break
        time.sleep(0.5)
    assert [(b["seq"], b["balance"]) for b in balances] == [(100, "100.00")] * CUSTOMERS

"""Refunds and disputes as Stripe sends them today, through the webhook's path into the
control database's outbox, then through the balances engine on a simulated clock.

Payloads are Stripe's example objects (``tests/stripe_objects.py``): a refund and a dispute
carry no ``metadata``, a ``charge.refunded`` lists no refunds. The customer is found through
the PaymentIntent streambill credited, or, for one it never recorded, at Stripe (localstripe).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.models import OutboxMessage
from streambill.control.plane import ControlPlane
from streambill.control.principal import Principal
from streambill.control.schemas import CustomerCreate
from streambill.control.tenants import create_customer
from streambill.engine.balances import BalanceEngine, Record, partition_for
from streambill.payments.gateway import StripeConfig, StripeGateway
from streambill.payments.webhooks import take_in
from streambill.streams import topics
from streambill.streams.events import decode_account, payment_from_obj
from stripe_objects import dispute, refund, stripe_event, stripe_object, succeeded_intent
from stripestub import API_KEY, client, localstripe

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", None, None, "admin")
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
PARTITIONS = 4


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Clock]]:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    db.migrate(url)
    engine = db.open_engine(url)
    sessions = db.session_factory(engine)
    clock = Clock()
    yield ControlPlane(sessions=sessions, auth=Authenticator(sessions, None), clock=clock), clock
    await engine.dispose()


async def customer(cp: ControlPlane, name: str = "Praxis Weber") -> str:
    return (await create_customer(cp, ADMIN, CustomerCreate(name=name, currency="EUR"))).id


def at(clock: Clock) -> int:
    return int(clock.now.timestamp())


async def deliver(
    cp: ControlPlane, kind: str, obj: dict[str, Any], clock: Clock, **kw: Any
) -> tuple[bool, int]:
    return await take_in(cp, stripe_event(kind, obj, created=at(clock)), **kw)


async def outbox_payments(cp: ControlPlane) -> list[dict[str, Any]]:
    async with cp.sessions() as session:
        rows = await session.execute(
            select(OutboxMessage.payload)
            .where(OutboxMessage.topic == topics.PAYMENTS)
            .order_by(OutboxMessage.id)
        )
        return [orjson.loads(p) for p in rows.scalars()]


def balances_after(payments: list[dict[str, Any]], customer_id: str) -> tuple[int, list[str]]:
    """The customer's balance (micros) once the balances engine applied ``payments``, each
    at its own time: (balance, kinds of the ledger entries)."""
    account = decode_account(
        orjson.dumps(
            {
                "account_id": customer_id,
                "kind": "customer",
                "parent_id": None,
                "name": "x",
                "currency": "EUR",
                "status": "active",
                "prices": [],
                "updated_at": START.isoformat(),
            }
        )
    )
    engine = BalanceEngine(
        partitions=PARTITIONS,
        accounts={customer_id: account},
        balances={},
        dedup={},
        unknown_customer_retry_s=60,
        dedup_window_s=8 * 86400,
    )
    partition = partition_for(customer_id.encode(), PARTITIONS)
    kinds, balance = [], 0
    for offset, doc in enumerate(payments):
        rec = Record(topics.PAYMENTS, partition, offset, customer_id.encode(), orjson.dumps(doc))
        now = datetime.fromisoformat(doc["occurred_at"]).timestamp() + 1
        out = engine.process([rec], now)
        engine.confirm(out.batch_no)
        for m in out.emit:
            if m.topic == topics.LEDGER and m.value:
                entry = orjson.loads(m.value)
                kinds.append(entry["kind"])
                balance = entry["balance_micros"]
    return balance, kinds


async def test_three_partial_refunds_over_20_days_debit_exactly_their_sum(
    world: tuple[ControlPlane, Clock],
) -> None:
    cp, clock = world
    cid = await customer(cp)
    await deliver(cp, "payment_intent.succeeded", succeeded_intent("pi_A", 10_000, cid), clock)
    for n, (days, cents) in enumerate(((1, 1_250), (9, 2_000), (20, 755))):
        clock.now = START + timedelta(days=days)
        created = refund(f"re_{n}", cents, "pending", intent="pi_A")
        # Stripe's order is not guaranteed: the update may come first, and each is re-sent.
        done = refund(f"re_{n}", cents, "succeeded", intent="pi_A")
        await deliver(cp, "charge.refund.updated", done, clock)
        await deliver(cp, "refund.created", created, clock)
        await deliver(cp, "refund.updated", done, clock)
        charge = stripe_object("charge", id="ch_of_pi_A", payment_intent="pi_A", refunded=True)
        await deliver(cp, "charge.refunded", charge, clock)  # no refunds listed: nothing
    payments = await outbox_payments(cp)
    assert [(p["kind"], p["event_id"], p["amount"]) for p in payments] == [
        ("topup", "pi_A", "100.00"),
        ("refund", "re_0", "12.50"),
        ("refund", "re_1", "20.00"),
        ("refund", "re_2", "7.55"),
    ]
    assert {p["customer_id"] for p in payments} == {cid}
    balance, kinds = balances_after(payments, cid)
    assert balance == 100_000_000 - 12_500_000 - 20_000_000 - 7_550_000
    assert kinds == ["topup", "refund", "refund", "refund"]


async def test_a_refund_that_fails_after_it_was_debited_is_credited_back(
    world: tuple[ControlPlane, Clock],
) -> None:
    cp, clock = world
    cid = await customer(cp)
    await deliver(cp, "payment_intent.succeeded", succeeded_intent("pi_S", 5_000, cid), clock)
    # A SEPA refund: pending for days, then it fails at the bank.
    await deliver(cp, "refund.created", refund("re_S", 5_000, "pending", intent="pi_S"), clock)
    clock.now += timedelta(days=4)
    failed = refund("re_S", 5_000, "failed", intent="pi_S")
    await deliver(cp, "refund.failed", failed, clock)
    await deliver(cp, "charge.refund.updated", failed, clock)
    # One seen failed first (out of order) never takes money, even when "pending" follows.
    await deliver(cp, "refund.failed", refund("re_T", 1_000, "canceled", intent="pi_S"), clock)
    await deliver(cp, "refund.created", refund("re_T", 1_000, "pending", intent="pi_S"), clock)
    payments = await outbox_payments(cp)
    assert [(p["kind"], p["event_id"]) for p in payments] == [
        ("topup", "pi_S"),
        ("refund", "re_S"),
        ("refund_reversal", "re_S:reversal"),
    ]
    balance, _ = balances_after(payments, cid)
    assert balance == 50_000_000


async def test_a_dispute_without_metadata_books_one_chargeback_and_reinstated_funds_restore(
    world: tuple[ControlPlane, Clock],
) -> None:
    cp, clock = world
    cid = await customer(cp)
    await deliver(cp, "payment_intent.succeeded", succeeded_intent("pi_D", 3_000, cid), clock)
    opened = dispute("dp_1", 3_000, "needs_response", intent="pi_D")
    assert opened["metadata"] == {}
    await deliver(cp, "charge.dispute.created", opened, clock)
    clock.now += timedelta(hours=1)
    await deliver(cp, "charge.dispute.funds_withdrawn", opened, clock)
    await deliver(cp, "charge.dispute.funds_withdrawn", opened, clock)  # re-sent
    clock.now += timedelta(days=30)
    won = dispute("dp_1", 3_000, "won", intent="pi_D")
    await deliver(cp, "charge.dispute.closed", won, clock)
    await deliver(cp, "charge.dispute.funds_reinstated", won, clock)
    # An inquiry withdraws nothing: its close credits nothing.
    inquiry = dispute("dp_2", 3_000, "won", intent="pi_D")
    await deliver(cp, "charge.dispute.funds_reinstated", inquiry, clock)
    payments = await outbox_payments(cp)
    assert [(p["kind"], p["event_id"], p["amount"]) for p in payments] == [
        ("topup", "pi_D", "30.00"),
        ("chargeback", "dp_1", "30.00"),
        ("chargeback_reversal", "dp_1:reinstated", "30.00"),
    ]
    balance, kinds = balances_after(payments[:2], cid)
    assert (balance, kinds) == (0, ["topup", "chargeback"])
    balance, _ = balances_after(payments, cid)
    assert balance == 30_000_000


async def test_a_thousand_refund_and_dispute_events_three_times_shuffled_move_money_once(
    world: tuple[ControlPlane, Clock],
) -> None:
    cp, clock = world
    customers = [await customer(cp, f"C{n}") for n in range(10)]
    expected: dict[str, int] = {}
    deliveries: list[tuple[str, dict[str, Any]]] = []
    for n, cid in enumerate(customers):
        topup = succeeded_intent(f"pi_{n}", 900_000, cid)
        await deliver(cp, "payment_intent.succeeded", topup, clock)
        expected[f"pi_{n}"] = 9_000_000_000
    rng = random.Random(20)
    for n in range(500):  # 500 refunds, each announced twice (created, then updated)
        cents = rng.randint(1, 999)
        intent = f"pi_{n % 10}"
        deliveries.append(("refund.created", refund(f"re_{n}", cents, "pending", intent=intent)))
        deliveries.append(("refund.updated", refund(f"re_{n}", cents, "succeeded", intent=intent)))
        expected[f"re_{n}"] = -cents * 10_000
    for n in range(250):  # 250 disputes: withdrawn, and every other one reinstated
        cents = rng.randint(1, 999)
        intent = f"pi_{n % 10}"
        opened = dispute(f"dp_{n}", cents, "needs_response", intent=intent)
        deliveries.append(("charge.dispute.funds_withdrawn", opened))
        expected[f"dp_{n}"] = -cents * 10_000
        if n % 2:
            deliveries.append(
                ("charge.dispute.funds_reinstated", dispute(f"dp_{n}", cents, "won", intent=intent))
            )
            expected[f"dp_{n}:reinstated"] = cents * 10_000
    assert len(deliveries) == 1_375  # at least 1,000 events
    events = [stripe_event(kind, obj, created=at(clock)) for kind, obj in deliveries]
    # Each event delivered three times, in any order. A reinstatement may now come before its
    # withdrawal: the pair then nets out to nothing moved, and must be left out of the sum.
    shuffled = [e for e in events for _ in range(3)]
    rng.shuffle(shuffled)
    answers = [await take_in(cp, e) for e in shuffled]
    assert sum(new for new, _ in answers) == len(events)
    payments = await outbox_payments(cp)
    ids = [p["event_id"] for p in payments]
    assert len(ids) == len(set(ids))
    moved = {p["event_id"]: payment_from_obj(p).signed_micros() for p in payments}
    first_seen: dict[str, str] = {}
    for e in shuffled:
        obj = e["data"]["object"]
        first_seen.setdefault(obj["id"], e["type"])
    for dp, first in first_seen.items():
        if dp.startswith("dp_") and first == "charge.dispute.funds_reinstated":
            expected.pop(dp)
            expected.pop(f"{dp}:reinstated")
    assert moved == expected


async def test_a_refund_of_a_payment_never_recorded_here_finds_its_customer_at_stripe(
    world: tuple[ControlPlane, Clock], tmp_path: Path
) -> None:
    cp, clock = world
    cid = await customer(cp)
    with localstripe(tmp_path) as url:
        sc = client(url)
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
        params: Any = {"type": "card", "card": card}
        pm = sc.v1.payment_methods.create(params=params)
        intent = sc.v1.payment_intents.create(
            params={
                "amount": 4_000,
                "currency": "eur",
                "payment_method": pm.id,
                "confirm": True,
                "metadata": {"customer_id": cid},
            }
        )
        foreign = sc.v1.payment_intents.create(
            params={"amount": 700, "currency": "eur", "payment_method": pm.id, "confirm": True}
        )
        gateway = StripeGateway(StripeConfig(API_KEY, url, 10))
        try:
            ours = refund("re_X", 1_500, "succeeded", intent=intent.id)
            await deliver(cp, "refund.created", ours, clock, gateway=gateway)
            theirs = refund("re_Y", 700, "succeeded", intent=foreign.id)
            await deliver(cp, "refund.created", theirs, clock, gateway=gateway)
        finally:
            await gateway.aclose()
    payments = await outbox_payments(cp)
    assert [(p["kind"], p["event_id"], p["customer_id"]) for p in payments] == [
        ("refund", "re_X", cid)
    ]


async def test_a_payment_delivered_again_30_days_later_credits_nothing(
    world: tuple[ControlPlane, Clock],
) -> None:
    cp, clock = world
    cid = await customer(cp)
    succeeded = stripe_event(
        "payment_intent.succeeded", succeeded_intent("pi_L", 2_000, cid), created=at(clock)
    )
    assert await take_in(cp, succeeded) == (True, 1)
    clock.now += timedelta(days=30)
    assert await take_in(cp, succeeded) == (False, 0)
    # Another announcement of the same money (the Checkout's completion, re-sent by the
    # reconciler or a replay) is a new Stripe event: the movement's own id stops it.
    session = stripe_object(
        "checkout_session_payment",
        id="cs_L",
        mode="payment",
        payment_status="paid",
        payment_intent="pi_L",
        amount_total=2_000,
        currency="eur",
        metadata={"customer_id": cid},
    )
    assert await deliver(cp, "checkout.session.completed", session, clock) == (True, 0)
    assert [p["event_id"] for p in await outbox_payments(cp)] == ["pi_L"]

"""The auto top-up service on a real SQLite control plane with a scripted Stripe.

Each Stripe answer is scripted per call, so the cases the whole-stack tests reach only by
chance are reached here every time: a call that took effect and timed out, a call that
never reached Stripe, a worker that died between recording and calling, declines in a row.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from streambill.control import db
from streambill.control.models import AutoTopupState, OutboxMessage, Tenant, TopupAttempt
from streambill.payments import policy
from streambill.payments.autotopup import AutoTopups, Entry
from streambill.payments.gateway import StripeDeclined, StripeUnreachable

pytestmark = pytest.mark.integration

LIMITS = policy.Limits(cooldown_s=0, daily_max=5, backoff_s=60, max_failures=3)
THRESHOLD = 5_000_000


@dataclass
class ScriptedStripe:
    """Answers ``charge_off_session`` from a script; remembers every PaymentIntent made."""

    script: list[str] = field(default_factory=list)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    lookups: int = 0

    def _intent(self, kwargs: dict[str, Any], status: str) -> dict[str, Any]:
        intent = {
            "id": f"pi_{len(self.intents) + 1}",
            "object": "payment_intent",
            "status": status,
            "amount": kwargs["amount_minor"],
            "amount_received": kwargs["amount_minor"] if status == "succeeded" else 0,
            "currency": kwargs["currency"].lower(),
            "created": 1_796_000_000,
            "metadata": kwargs["metadata"],
        }
        self.intents[intent["id"]] = intent
        return intent

    async def charge_off_session(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        step = self.script.pop(0) if self.script else "ok"
        if step == "ok":
            return self._intent(kwargs, "succeeded")
        if step == "took_effect_then_timeout":
            self._intent(kwargs, "succeeded")
            raise StripeUnreachable("timed out")
        if step == "lost_before_stripe":
            raise StripeUnreachable("connection refused")
        if step == "declined":
            intent = self._intent(kwargs, "requires_payment_method")
            intent["last_payment_error"] = {"code": "card_declined", "message": "declined"}
            raise StripeDeclined(
                "Your card was declined.",
                code="card_declined",
                status=402,
                payment_intent=intent,
                charge_id="ch_1",
            )
        if step == "auth":
            return self._intent(kwargs, "requires_action")
        raise AssertionError(step)

    async def find_attempt(self, stripe_customer: str, key: str, since: int) -> Any:
        self.lookups += 1
        for intent in self.intents.values():
            if intent["metadata"]["attempt_key"] == key:
                return intent
        return None

    async def payment_intent(self, intent_id: str) -> dict[str, Any]:
        return self.intents[intent_id]


@dataclass
class World:
    service: AutoTopups
    stripe: ScriptedStripe
    published: list[dict[str, Any]]
    sessions: Any
    now: list[datetime]
    seq: list[int] = field(default_factory=lambda: [0])

    def entry(self, balance: int, kind: str = "usage", source: str = "e") -> Entry:
        self.seq[0] += 1
        return Entry("cus_1", self.seq[0], kind, f"{source}{self.seq[0]}", balance, self.now[0])

    def credit(self, intent_id: str) -> Entry:
        self.seq[0] += 1
        return Entry("cus_1", self.seq[0], "topup", intent_id, 24_000_000, self.now[0])

    async def low(self, balance: int = 4_000_000) -> str | None:
        started = await self.service.on_low([self.entry(balance)])
        await self.service.wait_idle()
        return started[0] if started else None

    async def attempts(self) -> list[TopupAttempt]:
        async with self.sessions() as session:
            rows = await session.execute(select(TopupAttempt).order_by(TopupAttempt.number))
            return list(rows.scalars())

    async def state(self) -> AutoTopupState:
        async with self.sessions() as session:
            state = await session.get(AutoTopupState, "cus_1")
            assert state is not None
            return state

    async def outbox(self, topic: str) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(OutboxMessage.payload).where(OutboxMessage.topic == topic)
            )
            return [orjson.loads(p) for p in rows.scalars()]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    db.migrate(url)
    engine = db.open_engine(url)
    sessions = db.session_factory(engine)
    now = [datetime(2026, 11, 27, 10, 0, tzinfo=UTC)]
    async with sessions.begin() as session:
        session.add(
            Tenant(
                id="cus_1",
                kind="customer",
                name="Praxis",
                currency="EUR",
                status="active",
                prices=[],
                auto_topup={"enabled": True, "threshold": "5.00", "amount": "20.00"},
                stripe_customer_id="cus_stripe_1",
                payment_method_id="pm_1",
                version=1,
                created_at=now[0],
                updated_at=now[0],
            )
        )
    stripe = ScriptedStripe()
    published: list[dict[str, Any]] = []

    async def publish(payments: list[dict[str, Any]]) -> None:
        published.extend(payments)

    service = AutoTopups(
        sessions,
        stripe,  # type: ignore[arg-type]
        publish,
        LIMITS,
        public_url="https://billing.example",
        clock=lambda: now[0],
    )
    yield World(service, stripe, published, sessions, now)
    await engine.dispose()


async def resolve(world: World, after_s: float = 61) -> None:
    world.now[0] += timedelta(seconds=after_s)
    await world.service.resolve_due()


async def test_one_crossing_one_charge_one_payment_event(world: World) -> None:
    assert await world.low() == "at_cus_1_1"
    # Duplicates and later entries while the attempt is in flight (not yet credited).
    assert await world.low() is None
    assert await world.low(3_000_000) is None
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and attempt.idempotency_key == "autotopup:cus_1:1"
    assert len(world.stripe.calls) == 1
    assert world.stripe.calls[0]["amount_minor"] == 2000
    (payment,) = world.published
    assert payment["event_id"] == "pi_1" and payment["kind"] == "topup"
    assert payment["amount"] == "20.00" and payment["customer_id"] == "cus_1"
    # The credit shows up in the ledger: the attempt leaves flight; older entries stay stale.
    stale = world.entry(4_000_000)
    await world.service.on_credits([world.credit("pi_1")])
    assert (await world.state()).in_flight is None
    (attempt,) = await world.attempts()
    assert attempt.credited_at == world.now[0]
    assert await world.service.on_low([stale]) == []
    # A new crossing after the credit is a new attempt with the next number.
    assert await world.low() == "at_cus_1_2"
    assert [a.idempotency_key for a in await world.attempts()][-1] == "autotopup:cus_1:2"


async def test_a_call_that_took_effect_is_found_not_repeated(world: World) -> None:
    world.stripe.script = ["took_effect_then_timeout"]
    await world.low()
    (attempt,) = await world.attempts()
    assert attempt.status == "unknown" and world.published == []
    await world.low()  # more entries meanwhile: still one attempt in flight
    await resolve(world)
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and attempt.payment_intent_id == "pi_1"
    assert len(world.stripe.calls) == 1 and world.stripe.lookups == 1
    assert [p["event_id"] for p in world.published] == ["pi_1"]


async def test_a_call_that_never_arrived_is_made_again_under_the_same_key(world: World) -> None:
    world.stripe.script = ["lost_before_stripe", "lost_before_stripe"]
    await world.low()
    await resolve(world)  # looked up: no trace; look once more before calling again
    assert len(world.stripe.calls) == 1
    (attempt,) = await world.attempts()
    assert attempt.status == "unknown" and attempt.failure_code == "not_found_at_stripe"
    await resolve(world)  # still no trace: called again, lost again
    assert len(world.stripe.calls) == 2
    await resolve(world)
    await resolve(world)  # no trace twice: called again, answered
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and attempt.failure_code is None
    keys = {c["idempotency_key"] for c in world.stripe.calls}
    assert len(world.stripe.calls) == 3 and keys == {"autotopup:cus_1:1"}
    assert len(world.stripe.intents) == 1 and world.stripe.lookups == 4


async def test_a_worker_that_died_before_calling_leaves_a_pending_attempt(world: World) -> None:
    # Record the attempt, but never call (the worker died right after the commit).
    (started,) = await world.service._decide([world.entry(4_000_000)])
    assert started.attempt_id == "at_cus_1_1"
    await world.low()  # in flight: nothing new
    assert world.stripe.calls == []
    await resolve(world, after_s=31)
    await resolve(world, after_s=31)
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and len(world.stripe.calls) == 1


async def test_a_credit_seen_before_the_intent_was_known_settles_it(world: World) -> None:
    world.stripe.script = ["took_effect_then_timeout"]
    await world.low()
    # The reconciler credited the payment before the resolver found the intent.
    await world.service.on_credits([world.credit("pi_1")])
    assert (await world.state()).in_flight == "at_cus_1_1"
    await resolve(world)
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and attempt.credited_at is not None
    assert (await world.state()).in_flight is None
    assert world.published == []  # credited already: nothing to publish
    await resolve(world, after_s=600)
    assert world.published == [] and len(world.stripe.calls) == 1


async def test_declines_alert_back_off_and_switch_auto_topup_off(world: World) -> None:
    world.stripe.script = ["declined", "declined", "declined"]
    await world.low()
    assert (await world.attempts())[0].status == "failed"
    assert await world.low() is None  # backoff: 60 s
    world.now[0] += timedelta(seconds=61)
    assert await world.low() == "at_cus_1_2"
    world.now[0] += timedelta(seconds=61)
    assert await world.low() is None  # second backoff is 120 s
    world.now[0] += timedelta(seconds=60)
    assert await world.low() == "at_cus_1_3"
    state = await world.state()
    assert state.consecutive_failures == 3 and state.disabled_at is not None
    world.now[0] += timedelta(days=1)
    assert await world.low() is None
    alerts = await world.outbox("billing.alerts.v1")
    assert [a["kind"] for a in alerts] == [
        "topup_failed",
        "topup_failed",
        "topup_failed",
        "autotopup_disabled",
    ]
    assert alerts[0]["details"]["code"] == "card_declined"
    (account,) = await world.outbox("billing.accounts.v1")
    assert account["auto_topup"]["enabled"] is False and account["version"] == 2
    assert world.published == []


async def test_authentication_required_alerts_with_a_link(world: World) -> None:
    world.stripe.script = ["auth"]
    await world.low()
    (attempt,) = await world.attempts()
    assert attempt.status == "requires_action"
    (found,) = await world.outbox("billing.alerts.v1")
    assert found["kind"] == "topup_requires_action"
    url = "https://billing.example/v2/topups/at_cus_1_1/checkout"
    assert found["details"]["action_url"] == url
    assert (await world.state()).in_flight is None and world.published == []


async def test_the_daily_cap_holds(world: World) -> None:
    for n in range(5):
        assert await world.low() == f"at_cus_1_{n + 1}"
        await world.service.on_credits([world.credit(f"pi_{n + 1}")])
    assert await world.low() is None
    world.now[0] = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)
    assert await world.low() == "at_cus_1_6"


async def test_a_success_whose_publish_failed_is_published_by_the_resolver(world: World) -> None:
    publish = world.service.publish_payments
    failures = [RuntimeError("broker down")]

    async def flaky(payments: list[dict[str, Any]]) -> None:
        if failures:
            raise failures.pop()
        await publish(payments)

    world.service.publish_payments = flaky
    await world.low()
    (attempt,) = await world.attempts()
    assert attempt.status == "succeeded" and world.published == []
    await resolve(world, after_s=2)  # not yet: the credit may still be on its way
    assert world.published == []
    await resolve(world, after_s=4)
    assert [p["event_id"] for p in world.published] == ["pi_1"]
    await world.service.on_credits([world.credit("pi_1")])
    await resolve(world, after_s=60)
    assert len(world.published) == 1 and len(world.stripe.calls) == 1


async def test_a_broken_account_never_stops_the_others_top_ups(world: World) -> None:
    """One account among 100 holds an auto top-up the api now refuses (sub-cent amount,
    written before the check or by hand): it is skipped, and the 99 others are charged in
    the same decision, well within 5 s."""
    async with world.sessions.begin() as session:
        for n in range(2, 101):
            session.add(
                Tenant(
                    id=f"cus_{n}",
                    kind="customer",
                    name=f"C{n}",
                    currency="EUR",
                    status="active",
                    prices=[],
                    auto_topup={
                        "enabled": True,
                        "threshold": "5.00",
                        "amount": "20.005" if n == 50 else "20.00",
                    },
                    stripe_customer_id=f"cus_stripe_{n}",
                    payment_method_id=f"pm_{n}",
                    version=1,
                    created_at=world.now[0],
                    updated_at=world.now[0],
                )
            )
    entries = [
        Entry(f"cus_{n}", 1, "usage", f"e{n}", 4_000_000, world.now[0]) for n in range(1, 101)
    ]
    started_at = time.monotonic()
    started = await world.service.on_low(entries)
    await world.service.wait_idle()
    elapsed = time.monotonic() - started_at
    assert sorted(started) == sorted(f"at_cus_{n}_1" for n in range(1, 101) if n != 50)
    assert elapsed < 5, elapsed
    assert {c["metadata"]["customer_id"] for c in world.stripe.calls} == {
        f"cus_{n}" for n in range(1, 101) if n != 50
    }
    assert {p["customer_id"] for p in world.published} == {
        f"cus_{n}" for n in range(1, 101) if n != 50
    }
    # Fixed, the broken one is charged at its next crossing.
    async with world.sessions.begin() as session:
        broken = await session.get(Tenant, "cus_50")
        assert broken is not None
        broken.auto_topup = {"enabled": True, "threshold": "5.00", "amount": "20.01"}
    again = await world.service.on_low([Entry("cus_50", 2, "usage", "f", 4_000_000, world.now[0])])
    assert again == ["at_cus_50_1"]

"""Auto top-up: charge the saved payment method when a balance crosses below its threshold.

The worker's ``autotopup`` agent (:mod:`streambill.agents.autotopup`) hands ledger entries to
:class:`AutoTopups`. Safety rests on the database, not on the stream:

1. **One attempt in flight per customer.** A decision locks the customer's
   ``autotopup_states`` row, asks :func:`~streambill.payments.policy.decide` and, to charge,
   records the attempt (``pending``, number *n*, idempotency key ``autotopup:<customer>:<n>``)
   and marks it in flight, all in one transaction, before Stripe hears of it. Duplicated or
   shuffled ledger entries find the attempt in flight, or their ``seq`` already covered.
2. **A call that may have taken effect is looked up, never blindly repeated.** A timeout, a
   lost connection or a 5xx leaves the attempt ``unknown``; the resolver looks it up at
   Stripe (:meth:`StripeGateway.find_attempt`) and only if Stripe has no trace of it calls
   again, under the same idempotency key. A worker killed between recording and calling
   leaves ``pending``, resolved the same way.
3. **Money moves only through the payments topic.** A succeeded attempt becomes the same
   ``topup`` payment event a webhook or the reconciler would make (``event_id`` = the
   PaymentIntent id), published by the agent and re-published until marked; the balances
   agent applies it once. The attempt leaves flight when its credit shows up in the ledger.
4. **Failures slow down and stop.** A decline raises a ``topup_failed`` alert and backs off
   (doubling); after ``AUTOTOPUP_MAX_FAILURES`` in a row auto top-up is switched off for the
   customer (an account change through the outbox) with an ``autotopup_disabled`` alert. A
   card that needs the customer (``authentication_required``) raises
   ``topup_requires_action`` with a link where the customer pays the same amount in Stripe
   Checkout. Cooldown and a daily cap bound what a runaway usage stream can charge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import Counter, Histogram
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import AuditRecord, AutoTopupState, Tenant, TopupAttempt
from streambill.control.outbox import account_message, enqueue
from streambill.domain.money import format_micros, to_micros
from streambill.payments import policy
from streambill.payments.gateway import (
    StripeDeclined,
    StripeGateway,
    StripeProblem,
    StripeUnreachable,
)
from streambill.payments.stripe_events import MINOR_UNITS, payment_events
from streambill.streams.topics import ACCOUNTS, ALERTS

log = logging.getLogger(__name__)

IN_FLIGHT: Final = ("pending", "unknown", "processing")
LOOKUP_AFTER_S: Final = 2.0
LOOKUP_MAX_WAIT_S: Final = 60.0
PROCESSING_CHECK_S: Final = 60.0
# An attempt whose call got no answer for this long (the worker died mid-call) is looked up.
PENDING_STALE_S: Final = 30.0
REPUBLISH_AFTER_S: Final = 5.0
# A succeeded attempt whose credit never showed in the ledger (read past, or lost) leaves
# flight after this; the reconciler makes sure the credit itself arrives.
CREDIT_WAIT: Final = timedelta(minutes=10)
HINT_MAX_S: Final = 30.0
UNMATCHED_CREDITS_MAX: Final = 10_000
NOT_FOUND_RECHECK_MIN_S: Final = 10.0
RESOLVE_CONCURRENCY: Final = 16
NOT_FOUND: Final = "not_found_at_stripe"

_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)
INTENT_SECONDS = Histogram(
    "streambill_topup_intent_seconds",
    "Auto top-up: threshold crossing (ledger entry applied) to PaymentIntent answered",
    buckets=_BUCKETS,
)
CREDIT_SECONDS = Histogram(
    "streambill_topup_credit_seconds",
    "Auto top-up: threshold crossing to the top-up's credit applied in the ledger",
    buckets=_BUCKETS,
)
ATTEMPTS = Counter(
    "streambill_topup_attempts_total", "Auto top-up attempts by outcome", ["outcome"]
)
SKIPS = Counter("streambill_topup_skips_total", "Auto top-up decisions not to charge", ["reason"])

# Publishes payment events (keyed by customer) and returns once the broker has them all.
PublishPayments = Callable[[list[dict[str, Any]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Entry:
    """What the agent reads of a ledger entry."""

    customer_id: str
    seq: int
    kind: str
    source_event_id: str
    balance_micros: int
    applied_at: datetime


def attempt_key(customer_id: str, number: int) -> str:
    """The idempotency key of a customer's n-th auto top-up.

    >>> attempt_key("cus_1", 3)
    'autotopup:cus_1:3'
    """
    return f"autotopup:{customer_id}:{number}"


def minor_units(amount_micros: int, currency: str) -> int:
    """Micros to Stripe's integer minor units; refuses amounts finer than a cent.

    >>> minor_units(20_000_000, "EUR")
    2000
    """
    digits = MINOR_UNITS[currency.upper()]
    per_minor = 1_000_000 // 10**digits
    if amount_micros % per_minor:
        raise ValueError(f"{amount_micros} micros is not a whole number of minor units")
    return amount_micros // per_minor


def _state_view(row: AutoTopupState) -> policy.State:
    return policy.State(
        next_number=row.next_number,
        in_flight=row.in_flight,
        armed_after_seq=row.armed_after_seq,
        consecutive_failures=row.consecutive_failures,
        backoff_until=row.backoff_until,
        last_attempt_at=row.last_attempt_at,
        day=row.day,
        day_count=row.day_count,
        disabled=row.disabled_at is not None,
    )


def alert(
    kind: str, tenant: Tenant, attempt: TopupAttempt, now: datetime, **details: Any
) -> dict[str, Any]:
    """A ``billing.alerts.v1`` value about an attempt; its id is deterministic."""
    return {
        "alert_id": f"{kind}:{attempt.id}",
        "customer_id": tenant.id,
        "reseller_id": tenant.parent_id,
        "kind": kind,
        "details": {
            "attempt_id": attempt.id,
            "amount": format_micros(attempt.amount_micros),
            "amount_micros": attempt.amount_micros,
            "currency": attempt.currency,
            **details,
        },
        "created_at": now.isoformat(),
    }


@dataclass(frozen=True, slots=True)
class _Rows:
    attempts: dict[str, TopupAttempt]
    tenants: dict[str, Tenant]
    states: dict[str, AutoTopupState]


@dataclass(frozen=True, slots=True)
class _Call:
    """A Stripe call to make for an attempt recorded as pending."""

    attempt_id: str
    customer_id: str
    request: dict[str, Any]


class AutoTopups:
    """Decides, charges, settles and resolves auto top-ups (see the module docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[SqlSession],
        gateway: StripeGateway,
        publish_payments: PublishPayments,
        limits: policy.Limits,
        *,
        public_url: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        concurrency: int = 32,
    ) -> None:
        self.sessions = sessions
        self.gateway = gateway
        self.publish_payments = publish_payments
        self.limits = limits
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # customer -> monotonic time before which its entries need no database round trip
        # (an attempt in flight here, a cooldown, a backoff). Only a shortcut: the locked
        # state row decides.
        self._quiet: dict[str, float] = {}
        _Settle = tuple[
            str,
            dict[str, Any] | None,
            StripeProblem | None,
            asyncio.Future[str],
        ]
        self._settles: list[_Settle] = []
        self._settling: asyncio.Future[None] | None = None
        self._unmatched_credits: OrderedDict[str, Entry] = OrderedDict()
        # An attempt absent at Stripe is called again only after a second lookup this much
        # later: a call that timed out may still be queued at Stripe's end.
        self.recheck_absent_s = max(NOT_FOUND_RECHECK_MIN_S, 3 * gateway_timeout(gateway))

    # Ledger entries
    async def observe(
        self, entries: list[Entry], threshold_of: Callable[[str], int | None]
    ) -> None:
        """Handle a batch of ledger entries (any order, duplicates allowed): its credits in
        one transaction, then its decisions in one transaction."""
        lowest: dict[str, Entry] = {}
        credits: list[Entry] = []
        for entry in entries:
            if entry.kind == "topup":
                credits.append(entry)
                continue
            threshold = threshold_of(entry.customer_id)
            if threshold is None or entry.balance_micros >= threshold:
                continue
            held = lowest.get(entry.customer_id)
            if held is None or entry.seq > held.seq:
                lowest[entry.customer_id] = entry
        if credits:
            await self.on_credits(credits)
        now = time.monotonic()
        low = [e for c, e in lowest.items() if self._quiet.get(c, 0.0) <= now]
        if low:
            await self.on_low(low)

    async def on_low(self, entries: list[Entry]) -> list[str]:
        """Balances below their thresholds (one entry per customer): start the attempts the
        rules allow. Returns the ids of the attempts started."""
        for _ in range(3):
            try:
                charges = await self._decide(entries)
                break
            except IntegrityError:  # two deciders created a state row at once: decide again
                continue
        else:
            return []
        for charge in charges:
            self._quiet[charge.customer_id] = time.monotonic() + HINT_MAX_S
            self._spawn(self._charge(charge))
        return [c.attempt_id for c in charges]

    async def _decide(self, entries: list[Entry]) -> list[_Call]:
        now = self.clock()
        charges: list[_Call] = []
        ids = [e.customer_id for e in entries]
        async with self.sessions.begin() as session:
            tenants = {
                t.id: t
                for t in (await session.execute(select(Tenant).where(Tenant.id.in_(ids)))).scalars()
            }
            states = await self._states(session, ids, now)
            for entry in entries:
                tenant = tenants.get(entry.customer_id)
                charge = self._decide_one(session, entry, tenant, states[entry.customer_id], now)
                if charge is not None:
                    charges.append(charge)
        return charges

    def _decide_one(
        self,
        session: SqlSession,
        entry: Entry,
        tenant: Tenant | None,
        state: AutoTopupState,
        now: datetime,
    ) -> _Call | None:
        settings = (tenant.auto_topup or {}) if tenant is not None else {}
        if tenant is None or tenant.status != "active" or not settings.get("enabled"):
            SKIPS.labels("not_enabled").inc()
            return None
        if not tenant.payment_method_id or not tenant.stripe_customer_id:
            SKIPS.labels("no_payment_method").inc()
            self._quiet[entry.customer_id] = time.monotonic() + HINT_MAX_S
            return None
        threshold = to_micros(str(settings.get("threshold", "0")), field="threshold")
        amount = to_micros(str(settings.get("amount", "0")), field="amount")
        decision = policy.decide(
            _state_view(state),
            seq=entry.seq,
            balance_micros=entry.balance_micros,
            threshold_micros=threshold,
            now=now,
            limits=self.limits,
        )
        if isinstance(decision, policy.Skip):
            SKIPS.labels(decision.reason).inc()
            if decision.retry_at is not None:
                wait = min(HINT_MAX_S, (decision.retry_at - now).total_seconds())
                self._quiet[entry.customer_id] = time.monotonic() + max(0.0, wait)
            return None
        number = decision.number
        attempt = TopupAttempt(
            id=f"at_{entry.customer_id}_{number}",
            customer_id=entry.customer_id,
            kind="auto",
            number=number,
            idempotency_key=attempt_key(entry.customer_id, number),
            amount_micros=amount,
            currency=tenant.currency,
            status="pending",
            crossing_seq=entry.seq,
            crossed_at=entry.applied_at,
            created_at=now,
            updated_at=now,
            calls=1,
            next_check_at=now + timedelta(seconds=PENDING_STALE_S),
        )
        session.add(attempt)
        today = policy.day_of(now)
        state.day_count = state.day_count + 1 if state.day == today else 1
        state.day = today
        state.next_number = number + 1
        state.in_flight = attempt.id
        state.armed_after_seq = max(state.armed_after_seq, entry.seq)
        state.last_attempt_at = now
        state.updated_at = now
        return self._request(tenant, attempt)

    def _request(self, tenant: Tenant, attempt: TopupAttempt) -> _Call:
        return _Call(
            attempt.id,
            tenant.id,
            {
                "stripe_customer": tenant.stripe_customer_id or "",
                "payment_method": tenant.payment_method_id or "",
                "amount_minor": minor_units(attempt.amount_micros, attempt.currency),
                "currency": attempt.currency,
                "metadata": self._metadata(tenant, attempt),
                "idempotency_key": attempt.idempotency_key,
            },
        )

    async def _states(
        self, session: SqlSession, customer_ids: list[str], now: datetime
    ) -> dict[str, AutoTopupState]:
        """The customers' state rows, locked (created where missing)."""
        query = select(AutoTopupState).where(AutoTopupState.customer_id.in_(customer_ids))
        found = {
            s.customer_id: s for s in (await session.execute(query.with_for_update())).scalars()
        }
        missing = [c for c in customer_ids if c not in found]
        for customer_id in missing:
            found[customer_id] = AutoTopupState(
                customer_id=customer_id,
                next_number=1,
                armed_after_seq=0,
                consecutive_failures=0,
                day_count=0,
                updated_at=now,
            )
            session.add(found[customer_id])
        if missing:
            await session.flush()
        return found

    async def on_credits(self, entries: list[Entry]) -> None:
        """Top-ups reached the ledger: those of auto top-ups are done, their customers'
        attempts leave flight. A credit of an intent not (yet) known here, say one whose
        call timed out and that the reconciler or a webhook credited first, is remembered
        for when the resolver finds the intent."""
        ids = {e.source_event_id: e for e in entries}
        now = self.clock()
        async with self.sessions.begin() as session:
            attempts = (
                await session.execute(
                    select(TopupAttempt).where(TopupAttempt.payment_intent_id.in_(list(ids)))
                )
            ).scalars()
            for attempt in attempts:
                entry = ids.pop(attempt.payment_intent_id or "")
                state = await session.get(AutoTopupState, attempt.customer_id)
                self._credited(attempt, state, entry, now)
        for intent_id, entry in ids.items():
            self._unmatched_credits[intent_id] = entry
            while len(self._unmatched_credits) > UNMATCHED_CREDITS_MAX:
                self._unmatched_credits.popitem(last=False)
        for entry in entries:
            self._quiet.pop(entry.customer_id, None)

    def _credited(
        self, attempt: TopupAttempt, state: AutoTopupState | None, entry: Entry, now: datetime
    ) -> None:
        if attempt.credited_at is not None:
            return
        attempt.credited_at = entry.applied_at
        attempt.status = "succeeded"
        attempt.next_check_at = None
        attempt.updated_at = now
        if attempt.kind == "auto" and attempt.crossed_at is not None:
            CREDIT_SECONDS.observe(
                max(0.0, (entry.applied_at - attempt.crossed_at).total_seconds())
            )
        if state is not None:
            if state.in_flight == attempt.id:
                state.in_flight = None
            state.armed_after_seq = max(state.armed_after_seq, entry.seq)
            state.updated_at = now

    # Charging
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _charge(self, call: _Call) -> None:
        async with self._slots:
            try:
                try:
                    intent = await self.gateway.charge_off_session(**call.request)
                except StripeProblem as exc:
                    await self.settle(call.attempt_id, None, exc)
                    return
                await self.settle(call.attempt_id, intent, None)
            except Exception:
                log.exception(
                    "auto top-up %s: the attempt is left for the resolver", call.attempt_id
                )

    async def _call_again(self, attempt_id: str) -> None:
        """Call Stripe again for an attempt it has no trace of, under the same key."""
        async with self.sessions.begin() as session:
            attempt = await session.get(TopupAttempt, attempt_id)
            tenant = await session.get(Tenant, attempt.customer_id) if attempt else None
            if attempt is None or tenant is None:
                return
            attempt.calls += 1
            attempt.failure_code = None
            attempt.updated_at = self.clock()
            attempt.next_check_at = attempt.updated_at + timedelta(seconds=PENDING_STALE_S)
            call = self._request(tenant, attempt)
        await self._charge(call)

    def _metadata(self, tenant: Tenant, attempt: TopupAttempt) -> dict[str, str]:
        metadata = {
            "customer_id": tenant.id,
            "attempt_id": attempt.id,
            "attempt_key": attempt.idempotency_key,
            "topup": attempt.kind,
        }
        if tenant.parent_id:
            metadata["reseller_id"] = tenant.parent_id
        return metadata

    # Outcomes
    async def settle(
        self,
        attempt_id: str,
        intent: dict[str, Any] | None,
        problem: StripeProblem | None,
    ) -> str:
        """Record what Stripe answered (an intent, or an error) and act on it; publish the
        payment event of a success. Returns the attempt's new status.

        Answers arriving together are recorded in one transaction (a group commit: on
        SQLite each commit costs a round trip through the driver's thread and the disk)."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._settles.append((attempt_id, intent, problem, done))
        if self._settling is None or self._settling.done():
            self._settling = asyncio.ensure_future(self._drain_settles())
        return await done

    async def _drain_settles(self) -> None:
        while self._settles:
            batch, self._settles = self._settles, []
            now = self.clock()
            try:
                async with self.sessions.begin() as session:
                    rows = await self._settle_rows(session, [item[0] for item in batch], now)
                    results = [
                        self._settle_one(session, rows, attempt_id, intent, problem, now)
                        for attempt_id, intent, problem, _ in batch
                    ]
            except Exception as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            payments = [payment for _, payment, _ in results if payment is not None]
            if payments:
                try:
                    await self.publish_payments(payments)
                except Exception:  # recorded as succeeded: the resolver publishes it again
                    log.exception("auto top-up: %d payment events not published", len(payments))
            for (*_, done), (outcome, _, customer_id) in zip(batch, results, strict=True):
                if outcome not in ("unknown", "processing") and customer_id:
                    self._quiet.pop(customer_id, None)
                if not done.done():
                    done.set_result(outcome)

    async def _settle_rows(
        self, session: SqlSession, attempt_ids: list[str], now: datetime
    ) -> _Rows:
        """The attempts of a settle batch with their customers and (locked) states."""
        attempts = {
            a.id: a
            for a in (
                await session.execute(
                    select(TopupAttempt).where(TopupAttempt.id.in_(attempt_ids)).with_for_update()
                )
            ).scalars()
        }
        customer_ids = sorted({a.customer_id for a in attempts.values()})
        tenants = {
            t.id: t
            for t in (
                await session.execute(select(Tenant).where(Tenant.id.in_(customer_ids)))
            ).scalars()
        }
        states = await self._states(session, customer_ids, now)
        return _Rows(attempts, tenants, states)

    def _settle_one(
        self,
        session: SqlSession,
        rows: _Rows,
        attempt_id: str,
        intent: dict[str, Any] | None,
        problem: StripeProblem | None,
        now: datetime,
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        if isinstance(problem, StripeDeclined) and problem.payment_intent is not None:
            intent = problem.payment_intent
        outcome, code, message = classify(intent, problem)
        payment: dict[str, Any] | None = None
        attempt = rows.attempts.get(attempt_id)
        if attempt is None:
            return "missing", None, None
        customer_id = attempt.customer_id
        if attempt.status in ("succeeded", "failed", "requires_action"):
            return attempt.status, None, customer_id  # settled already (resolver and answer)
        tenant = rows.tenants[customer_id]
        state = rows.states[customer_id]
        if intent is not None and intent.get("id"):
            attempt.payment_intent_id = intent["id"]
            if attempt.intent_at is None and outcome != "unknown":
                attempt.intent_at = now
                if attempt.crossed_at is not None:
                    INTENT_SECONDS.observe(max(0.0, (now - attempt.crossed_at).total_seconds()))
        attempt.status = outcome
        attempt.updated_at = now
        attempt.failure_code = code
        attempt.failure_message = message[:500] if message else None
        ATTEMPTS.labels(outcome).inc()
        if outcome == "succeeded":
            state.consecutive_failures = 0
            state.backoff_until = None
            seen = self._unmatched_credits.pop(attempt.payment_intent_id or "", None)
            if seen is not None:  # credited before we knew the intent was ours
                self._credited(attempt, state, seen, now)
            else:
                # Re-published from here on until its credit shows (see resolve_due).
                attempt.next_check_at = now + timedelta(seconds=REPUBLISH_AFTER_S)
                payment = self._payment(intent)
        elif outcome == "unknown":
            wait = min(LOOKUP_MAX_WAIT_S, LOOKUP_AFTER_S * 2 ** max(0, attempt.calls - 1))
            attempt.next_check_at = now + timedelta(seconds=wait)
            log.warning("auto top-up %s: %s; looking it up in %.0f s", attempt.id, message, wait)
        elif outcome == "processing":
            attempt.next_check_at = now + timedelta(seconds=PROCESSING_CHECK_S)
        elif outcome == "requires_action":
            attempt.next_check_at = None
            attempt.action_url = f"{self.public_url}/v2/topups/{attempt.id}/checkout"
            self._release(state, attempt)
            state.backoff_until = now + policy.backoff(1, self.limits)
            enqueue(
                session,
                ALERTS,
                tenant.id,
                alert(
                    "topup_requires_action",
                    tenant,
                    attempt,
                    now,
                    action_url=attempt.action_url,
                    payment_intent_id=attempt.payment_intent_id,
                    reason=code,
                ),
                now,
            )
        else:  # failed
            attempt.next_check_at = None
            self._release(state, attempt)
            self._failed(session, tenant, state, attempt, now)
        state.updated_at = now
        return outcome, payment, customer_id

    def _release(self, state: AutoTopupState, attempt: TopupAttempt) -> None:
        if state.in_flight == attempt.id:
            state.in_flight = None

    def _failed(
        self,
        session: SqlSession,
        tenant: Tenant,
        state: AutoTopupState,
        attempt: TopupAttempt,
        now: datetime,
    ) -> None:
        state.consecutive_failures += 1
        failures = state.consecutive_failures
        state.backoff_until = now + policy.backoff(failures, self.limits)
        enqueue(
            session,
            ALERTS,
            tenant.id,
            alert(
                "topup_failed",
                tenant,
                attempt,
                now,
                code=attempt.failure_code,
                message=attempt.failure_message,
                consecutive_failures=failures,
                retry_after=state.backoff_until.isoformat(),
            ),
            now,
        )
        if failures < self.limits.max_failures or state.disabled_at is not None:
            return
        reason = f"{failures} failed auto top-ups in a row (last: {attempt.failure_code})"
        state.disabled_at = now
        state.disabled_reason = reason
        tenant.auto_topup = {**(tenant.auto_topup or {}), "enabled": False}
        tenant.version += 1
        tenant.updated_at = now
        enqueue(session, ACCOUNTS, tenant.id, account_message(tenant), now)
        session.add(
            AuditRecord(
                at=now,
                actor="autotopup",
                action="autotopup.disabled",
                target=tenant.id,
                details={"reason": reason, "attempt_id": attempt.id},
            )
        )
        enqueue(
            session,
            ALERTS,
            tenant.id,
            alert("autotopup_disabled", tenant, attempt, now, reason=reason),
            now,
        )

    def _payment(self, intent: dict[str, Any] | None) -> dict[str, Any]:
        assert intent is not None
        created = intent.get("created")
        event = {
            "id": f"autotopup:{intent['id']}",
            "type": "payment_intent.succeeded",
            "created": created if type(created) is int else int(time.time()),
            "data": {"object": intent},
        }
        (payment,) = payment_events(event)
        return payment

    # The resolver
    async def resolve_due(self, limit: int = 100) -> int:
        """One round: look up attempts left pending or unknown, poll processing ones,
        re-publish succeeded ones whose credit has not shown yet (until ``CREDIT_WAIT``, then
        they leave flight; the reconciler makes sure of the credit). Returns how many
        attempts it acted on."""
        now = self.clock()
        async with self.sessions() as session:
            due = (
                await session.execute(
                    select(TopupAttempt.id, TopupAttempt.status, TopupAttempt.next_check_at)
                    .where(
                        TopupAttempt.kind == "auto",
                        TopupAttempt.status.in_((*IN_FLIGHT, "succeeded")),
                        TopupAttempt.next_check_at <= now,
                    )
                    .order_by(TopupAttempt.next_check_at)
                    .limit(limit)
                )
            ).all()
        slots = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def one(attempt_id: str, status: str, check_at: datetime | None) -> int:
            async with slots:
                if not await self._claim(attempt_id, check_at, now):
                    return 0
                if status == "succeeded":
                    await self._republish(attempt_id, now)
                else:
                    await self._resolve(attempt_id)
                return 1

        return sum(await asyncio.gather(*(one(*row) for row in due)))

    async def _claim(self, attempt_id: str, check_at: datetime | None, now: datetime) -> bool:
        """Take the attempt for one resolution (another worker's resolver may race)."""
        async with self.sessions.begin() as session:
            claimed = await session.execute(
                update(TopupAttempt)
                .where(TopupAttempt.id == attempt_id, TopupAttempt.next_check_at == check_at)
                .values(next_check_at=now + timedelta(seconds=PENDING_STALE_S))
            )
            return bool(getattr(claimed, "rowcount", 0))

    async def _resolve(self, attempt_id: str) -> None:
        async with self.sessions() as session:
            attempt = await session.get(TopupAttempt, attempt_id)
            tenant = await session.get(Tenant, attempt.customer_id) if attempt else None
            if attempt is None or tenant is None:
                return
            status, intent_id, key = (
                attempt.status,
                attempt.payment_intent_id,
                attempt.idempotency_key,
            )
            absent_before = attempt.failure_code == NOT_FOUND
            since = int(attempt.created_at.timestamp()) - 60
            stripe_customer = tenant.stripe_customer_id or ""
        intent: dict[str, Any] | None
        try:
            if intent_id is not None:
                intent = await self.gateway.payment_intent(intent_id)
            else:
                intent = await self.gateway.find_attempt(stripe_customer, key, since)
        except StripeProblem as exc:
            await self.settle(attempt_id, None, StripeUnreachable(f"lookup failed: {exc}"))
            return
        if intent is not None:
            log.info(
                "auto top-up %s: found %s (%s)", attempt_id, intent["id"], intent.get("status")
            )
            await self.settle(attempt_id, intent, None)
        elif status in ("pending", "unknown"):
            if absent_before:
                log.info("auto top-up %s: Stripe has no trace of it; calling again", attempt_id)
                await self._call_again(attempt_id)
            else:
                await self._mark_absent(attempt_id)

    async def _mark_absent(self, attempt_id: str) -> None:
        """First lookup without a trace: look again later before calling again."""
        now = self.clock()
        async with self.sessions.begin() as session:
            attempt = await session.get(TopupAttempt, attempt_id)
            if attempt is not None and attempt.status in ("pending", "unknown"):
                attempt.status = "unknown"
                attempt.failure_code = NOT_FOUND
                attempt.updated_at = now
                attempt.next_check_at = now + timedelta(seconds=self.recheck_absent_s)

    async def _republish(self, attempt_id: str, now: datetime) -> None:
        async with self.sessions.begin() as session:
            attempt = await session.get(TopupAttempt, attempt_id)
            if attempt is None or attempt.credited_at is not None:
                return
            intent_id = attempt.payment_intent_id
            if attempt.intent_at is not None and attempt.intent_at <= now - CREDIT_WAIT:
                attempt.next_check_at = None
                state = await session.get(AutoTopupState, attempt.customer_id)
                if state is not None and state.in_flight == attempt.id:
                    state.in_flight = None
                    state.updated_at = now
                log.warning("auto top-up %s: no credit seen after %s", attempt_id, CREDIT_WAIT)
                return
        if intent_id is None:
            return
        try:
            intent = await self.gateway.payment_intent(intent_id)
        except StripeProblem as exc:
            log.warning("auto top-up %s: cannot re-read %s: %s", attempt_id, intent_id, exc)
            return
        if intent.get("status") == "succeeded":
            await self.publish_payments([self._payment(intent)])

    async def wait_idle(self) -> None:
        """Wait for the charges in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def gateway_timeout(gateway: Any) -> float:
    config = getattr(gateway, "config", None)
    return float(getattr(config, "timeout_s", 0.0))


def classify(
    intent: dict[str, Any] | None, problem: StripeProblem | None
) -> tuple[str, str | None, str | None]:
    """(attempt status, failure code, message) for what Stripe answered.

    >>> classify({"id": "pi_1", "status": "succeeded"}, None)
    ('succeeded', None, None)
    >>> classify({"id": "pi_1", "status": "requires_action"}, None)[0]
    'requires_action'
    >>> classify(None, StripeUnreachable("timed out"))
    ('unknown', None, 'timed out')
    """
    if intent is not None:
        status = intent.get("status")
        error = intent.get("last_payment_error") or {}
        code = (error.get("decline_code") or error.get("code")) if isinstance(error, dict) else None
        if problem is not None and problem.code:
            code = problem.code
        message = (error.get("message") if isinstance(error, dict) else None) or (
            str(problem) if problem else None
        )
        if status == "succeeded":
            return "succeeded", None, None
        if status == "processing":
            return "processing", None, None
        if status in ("requires_action", "requires_confirmation") or code in (
            "authentication_required",
            "payment_intent_authentication_failure",
        ):
            return "requires_action", code or "authentication_required", message
        if status == "canceled":
            return "failed", code or "canceled", message
        return "failed", code or "payment_failed", message
    if isinstance(problem, StripeUnreachable):
        return "unknown", None, str(problem)
    if isinstance(problem, StripeDeclined) and problem.code == "authentication_required":
        return "requires_action", problem.code, str(problem)
    assert problem is not None
    return "failed", problem.code or "stripe_error", str(problem)

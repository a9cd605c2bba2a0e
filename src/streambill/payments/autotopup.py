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

The class is made of three parts: this module decides and charges (and takes credits from
the ledger), :mod:`streambill.payments.outcomes` records and acts on what Stripe answered,
:mod:`streambill.payments.resolver` looks up the attempts whose outcome is not known yet.
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

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import AutoTopupState, Tenant, TopupAttempt
from streambill.payments import policy
from streambill.payments.gateway import StripeGateway, StripeProblem
from streambill.payments.outcomes import SKIPS, PublishPayments, Settle
from streambill.payments.resolver import PENDING_STALE_S, Resolver
from streambill.payments.stripe_events import MINOR_UNITS

log = logging.getLogger(__name__)

HINT_MAX_S: Final = 30.0
UNMATCHED_CREDITS_MAX: Final = 10_000
NOT_FOUND_RECHECK_MIN_S: Final = 10.0


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


@dataclass(frozen=True, slots=True)
class _Call:
    """A Stripe call to make for an attempt recorded as pending."""

    attempt_id: str
    customer_id: str
    request: dict[str, Any]


class AutoTopups(Resolver):
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
        self._settles: list[Settle] = []
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
                try:
                    charge = self._decide_one(
                        session, entry, tenant, states[entry.customer_id], now
                    )
                except Exception:  # one customer's problem never stops the others' top-ups
                    SKIPS.labels("error").inc()
                    self._quiet[entry.customer_id] = time.monotonic() + HINT_MAX_S
                    log.exception("auto top-up for %s: decision failed", entry.customer_id)
                    continue
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
        chargeable = policy.chargeable(settings, tenant.currency)
        if isinstance(chargeable, str):
            # Refused at the edge since; an account written before (or by hand) is skipped,
            # visibly, and every other customer goes on.
            SKIPS.labels("invalid_settings").inc()
            self._quiet[entry.customer_id] = time.monotonic() + HINT_MAX_S
            log.warning("auto top-up for %s skipped: %s", entry.customer_id, chargeable)
            return None
        threshold, amount = chargeable
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

    async def wait_idle(self) -> None:
        """Wait for the charges in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def gateway_timeout(gateway: Any) -> float:
    config = getattr(gateway, "config", None)
    return float(getattr(config, "timeout_s", 0.0))

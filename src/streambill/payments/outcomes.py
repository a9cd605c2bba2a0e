"""Auto top-up outcomes: what Stripe answered, recorded on the attempt and acted on.

:func:`classify` reads an answer (an intent, or an error) as the attempt's next status;
:class:`Outcomes` records it, group-committing answers that arrive together, and acts on it:
a success is published as a payment event, a decline backs off and, after too many in a row,
switches auto top-up off, a card that needs the customer raises an alert with a link. It is
a part of :class:`~streambill.payments.autotopup.AutoTopups` (see that module's docstring);
the auto top-up's Prometheus metrics live here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import AuditRecord, AutoTopupState, Tenant, TopupAttempt
from streambill.control.outbox import account_message, enqueue
from streambill.domain.money import format_micros
from streambill.payments import policy
from streambill.payments.gateway import StripeDeclined, StripeProblem, StripeUnreachable
from streambill.payments.stripe_events import payment_events
from streambill.streams.topics import ACCOUNTS, ALERTS

if TYPE_CHECKING:
    from streambill.payments.autotopup import Entry

log = logging.getLogger(__name__)

LOOKUP_AFTER_S: Final = 2.0
LOOKUP_MAX_WAIT_S: Final = 60.0
PROCESSING_CHECK_S: Final = 60.0
REPUBLISH_AFTER_S: Final = 5.0

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
# An answer waiting for the group commit: attempt id, intent, error, and who waits for it.
Settle = tuple[str, dict[str, Any] | None, StripeProblem | None, asyncio.Future[str]]


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


class Outcomes:
    """Settling attempts: the part of :class:`~streambill.payments.autotopup.AutoTopups` that
    records Stripe's answers and the credits that end an attempt."""

    # Set by AutoTopups.__init__.
    sessions: async_sessionmaker[SqlSession]
    publish_payments: PublishPayments
    limits: policy.Limits
    public_url: str
    clock: Callable[[], datetime]
    _quiet: dict[str, float]
    _settles: list[Settle]
    _settling: asyncio.Future[None] | None
    _unmatched_credits: OrderedDict[str, Entry]

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

    def _settle_one(
        self,
        session: SqlSession,
        rows: _Rows,
        attempt_id: str,
        intent: dict[str, Any] | None,
        problem: StripeProblem | None,
        now: datetime,
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        """Record one answer on its attempt; returns (outcome, payment event to publish,
        customer)."""
        if isinstance(problem, StripeDeclined) and problem.payment_intent is not None:
            intent = problem.payment_intent
        outcome, code, message = classify(intent, problem)
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
        payment = self._act_on(session, tenant, state, attempt, intent, message, now)
        state.updated_at = now
        return outcome, payment, customer_id

    def _act_on(
        self,
        session: SqlSession,
        tenant: Tenant,
        state: AutoTopupState,
        attempt: TopupAttempt,
        intent: dict[str, Any] | None,
        message: str | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        """What the attempt's new status calls for; returns the payment event of a success
        whose credit has not shown yet."""
        outcome = attempt.status
        if outcome == "succeeded":
            state.consecutive_failures = 0
            state.backoff_until = None
            seen = self._unmatched_credits.pop(attempt.payment_intent_id or "", None)
            if seen is not None:  # credited before we knew the intent was ours
                self._credited(attempt, state, seen, now)
                return None
            # Re-published from here on until its credit shows (see resolve_due).
            attempt.next_check_at = now + timedelta(seconds=REPUBLISH_AFTER_S)
            return self._payment(intent)
        if outcome == "unknown":
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
                    reason=attempt.failure_code,
                ),
                now,
            )
        else:  # failed
            attempt.next_check_at = None
            self._release(state, attempt)
            self._failed(session, tenant, state, attempt, now)
        return None

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

    def _credited(
        self, attempt: TopupAttempt, state: AutoTopupState | None, entry: Entry, now: datetime
    ) -> None:
        """The attempt's credit reached the ledger: it is done and leaves flight."""
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

    def _payment(self, intent: dict[str, Any] | None) -> dict[str, Any]:
        """The ``topup`` payment event of a succeeded intent (the one a webhook would make)."""
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

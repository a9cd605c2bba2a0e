"""The auto top-up resolver: attempts whose outcome is not known yet, looked up at Stripe.

A call that may have taken effect is looked up, never blindly repeated (see
:mod:`streambill.payments.autotopup`): an attempt left ``pending`` or ``unknown`` is found at
Stripe by its idempotency key and settled; one Stripe has no trace of is looked up once more,
later, and only then called again under the same key. ``processing`` attempts are polled, and
succeeded ones re-published until their credit shows in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import select, update

from streambill.control.models import AutoTopupState, Tenant, TopupAttempt
from streambill.payments.gateway import StripeGateway, StripeProblem, StripeUnreachable
from streambill.payments.outcomes import Outcomes

log = logging.getLogger(__name__)

IN_FLIGHT: Final = ("pending", "unknown", "processing")
# An attempt whose call got no answer for this long (the worker died mid-call) is looked up.
PENDING_STALE_S: Final = 30.0
# A succeeded attempt whose credit never showed in the ledger (read past, or lost) leaves
# flight after this; the reconciler makes sure the credit itself arrives.
CREDIT_WAIT: Final = timedelta(minutes=10)
RESOLVE_CONCURRENCY: Final = 16
NOT_FOUND: Final = "not_found_at_stripe"


class Resolver(Outcomes):
    """Resolving attempts: the part of :class:`~streambill.payments.autotopup.AutoTopups`
    that looks up, at Stripe, what became of attempts still in flight."""

    # Set by AutoTopups.__init__.
    gateway: StripeGateway
    recheck_absent_s: float

    async def _call_again(self, attempt_id: str) -> None:
        """Call Stripe again under the attempt's key (the charging part of AutoTopups)."""
        raise NotImplementedError

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

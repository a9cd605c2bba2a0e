"""The reconciler: Stripe events that never arrived as webhooks are taken in anyway.

Stripe retries a webhook for three days, but an endpoint misconfigured for longer, a secret
rotated wrongly or a bug that answered 2xx without recording would lose money movements.
Every ``RECONCILE_INTERVAL_S`` the api replica holding the ``stripe-reconciler`` lease lists
Stripe's events of the last ``RECONCILE_LOOKBACK_S`` and feeds each one of a handled type
that is not in ``stripe_events`` through exactly the webhook's path
(:func:`~streambill.payments.webhooks.take_in`): the same dedup row, the same payment events
with the same ids. A payment that did arrive by another route (the auto top-up agent
publishes its own successes, a webhook raced the listing) is still applied once: its payment
event id is the PaymentIntent's, and the balances agent drops the repeat.

The lookback stays inside the balances agent's dedup window (8 days by default), so a
repeat is always recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from prometheus_client import Counter, Gauge
from sqlalchemy import select

from streambill.control import leases
from streambill.control.models import StripeEvent
from streambill.control.plane import ControlPlane
from streambill.errors import StreambillError
from streambill.payments.gateway import StripeGateway, StripeProblem
from streambill.payments.stripe_events import HANDLED_TYPES
from streambill.payments.webhooks import take_in

log = logging.getLogger(__name__)

LEASE_NAME: Final = "stripe-reconciler"
CHECK_BATCH: Final = 100

RECOVERED = Counter(
    "streambill_reconcile_recovered_total",
    "Stripe events taken in by the reconciler because their webhook never arrived",
    ["type"],
)
LAST_RUN = Gauge(
    "streambill_reconcile_last_success_timestamp_seconds", "When a reconcile round last finished"
)


@dataclass(frozen=True)
class Report:
    listed: int
    missing: int
    payments: int


class Reconciler:
    def __init__(
        self,
        control: ControlPlane,
        gateway: StripeGateway,
        *,
        interval_s: float,
        lookback_s: int,
        holder: str | None = None,
    ) -> None:
        self.control = control
        self.gateway = gateway
        self.interval_s = interval_s
        self.lookback_s = lookback_s
        self.holder = holder or f"reconciler-{secrets.token_hex(6)}"
        self._task: asyncio.Task[None] | None = None
        self.last_report: Report | None = None

    async def run_once(self) -> Report:
        """One pass over Stripe's recent events (no lease check: callers and tests)."""
        since = int((self.control.clock() - timedelta(seconds=self.lookback_s)).timestamp())
        listed = missing = payments = 0
        batch: list[dict[str, object]] = []

        async def flush() -> None:
            nonlocal missing, payments
            ids = [str(e["id"]) for e in batch]
            async with self.control.sessions() as session:
                known = set(
                    (
                        await session.execute(select(StripeEvent.id).where(StripeEvent.id.in_(ids)))
                    ).scalars()
                )
            for event in batch:
                if event["id"] in known:
                    continue
                try:
                    new, count = await take_in(self.control, dict(event), self.gateway)
                except StreambillError as exc:
                    log.warning("reconcile: Stripe event %s refused: %s", event["id"], exc)
                    continue
                if new:
                    missing += 1
                    payments += count
                    RECOVERED.labels(str(event["type"])).inc()
                    log.warning(
                        "reconcile: took in %s %s (its webhook never arrived): %d payment(s)",
                        event["type"],
                        event["id"],
                        count,
                    )
            batch.clear()

        async for event in self.gateway.events_since(since):
            listed += 1
            if event.get("type") in HANDLED_TYPES:
                batch.append(event)
                if len(batch) >= CHECK_BATCH:
                    await flush()
        if batch:
            await flush()
        report = Report(listed, missing, payments)
        self.last_report = report
        LAST_RUN.set_to_current_time()
        return report

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stripe-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await leases.release(self.control.sessions, LEASE_NAME, self.holder)

    async def _run(self) -> None:
        while True:
            try:
                ttl = self.interval_s * 3
                if await leases.acquire(
                    self.control.sessions, LEASE_NAME, self.holder, ttl, self.control.clock()
                ):
                    report = await self.run_once()
                    log.info(
                        "reconcile: %d Stripe events listed, %d never arrived, %d payments",
                        report.listed,
                        report.missing,
                        report.payments,
                    )
            except asyncio.CancelledError:
                raise
            except StripeProblem as exc:
                log.warning("reconcile: Stripe unavailable (%s); next round as planned", exc)
            except Exception:
                log.exception("reconcile round failed")
            await asyncio.sleep(self.interval_s)

"""The auto-closer: every few minutes, the api replica holding the ``commission-close`` lease
closes every reseller month whose grace has passed and that has no statement yet
(:meth:`MonthCloser.close_due`). Off with ``STREAMBILL_COMMISSIONS=0``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Final

from prometheus_client import Counter, Gauge

from streambill.commissions.close import MonthCloser
from streambill.control import leases

log = logging.getLogger(__name__)

LEASE_NAME: Final = "commission-close"
INTERVAL_S: Final = 300.0

CLOSED = Counter("streambill_statements_closed_total", "Statements written by the auto-closer")
LAST_RUN = Gauge(
    "streambill_autoclose_last_success_timestamp_seconds", "When an auto-close round last finished"
)


class AutoCloser:
    def __init__(
        self, closer: MonthCloser, *, interval_s: float = INTERVAL_S, holder: str | None = None
    ) -> None:
        self.closer = closer
        self.interval_s = interval_s
        self.holder = holder or f"autoclose-{secrets.token_hex(6)}"
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One round if this replica holds (or takes) the lease; statements written."""
        sessions = self.closer.cp.sessions
        ttl = self.interval_s * 3
        if not await leases.acquire(sessions, LEASE_NAME, self.holder, ttl, self.closer.cp.clock()):
            return 0
        made = await self.closer.close_due()
        CLOSED.inc(len(made))
        LAST_RUN.set_to_current_time()
        if made:
            log.info("auto-close: %d statement(s) written", len(made))
        return len(made)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commission-autoclose")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await leases.release(self.closer.cp.sessions, LEASE_NAME, self.holder)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("auto-close round failed; the next round tries again")
            await asyncio.sleep(self.interval_s)

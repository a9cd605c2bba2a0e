"""``streambill ml``: the process that runs the online-ML agents (``fraud``, ``forecast``).

Why a process of its own: scoring costs tens of microseconds of Python per event (River's
HalfSpaceTrees is most of it). In the Faust worker it would share one interpreter lock with
the balances agent, and the debit of every event would wait behind the fraud model; here it
runs beside the worker on another core and only reads what the worker and the services write.

One ML process per stack holds the ``ml`` lease in the control-plane database and runs both
agents over every partition; a second one (another replica) waits as a standby and takes over
from the checkpoints when the lease expires (:data:`LEASE_TTL_S`). A process that loses the
lease stops its agents before the new holder can start (the lease is renewed three times per
TTL and checked between batches).

``/healthz``, ``/readyz`` (200 when the agents run, or when standing by) and ``/metrics``
(Prometheus text) on ``ML_PORT``. SIGTERM/SIGINT: stop reading, checkpoint, release the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from typing import Final

from aiohttp import web

from streambill.agents.forecast import ForecastAgent
from streambill.agents.fraud import FraudAgent
from streambill.agents.modelstate import ModelAgent
from streambill.agents.publisher import Publisher
from streambill.control import db, leases
from streambill.gctune import apply_gc_threshold
from streambill.settings import Settings

log = logging.getLogger(__name__)

LEASE: Final = "ml"
LEASE_TTL_S: Final = 15.0
RENEW_EVERY_S: Final = 5.0


class MlProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = db.session_factory(db.open_engine(settings.control_db_url))
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.publisher = Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence)
        common = {
            "partitions": settings.topic_partitions,
            "fetch_wait_ms": settings.fetch_max_wait_ms,
            "checkpoint_ms": settings.ml_checkpoint_ms,
        }
        self.fraud = FraudAgent(
            settings.bootstrap,
            self.sessions,
            self.publisher,
            default_cutoff=settings.fraud_threshold,
            auto_suspend=settings.fraud_auto_suspend,
            **common,
        )
        # Its own producer: a flush waits for everything a producer holds.
        self.forecast = ForecastAgent(
            settings.bootstrap,
            self.sessions,
            Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence),
            horizon_h=settings.forecast_horizon_h,
            **common,
        )
        self.agents: list[ModelAgent] = [self.fraud, self.forecast]
        self.lease_held = False
        self.standby = False
        self._lease_until = 0.0
        self.stopping = asyncio.Event()

    def lease_valid(self) -> bool:
        """Whether the lease is ours and unexpired (no other process can have taken over)."""
        return self.lease_held and time.monotonic() < self._lease_until

    def holding(self) -> bool:
        """Whether the agents may go on: the lease is valid and no stop was asked for."""
        return self.lease_valid() and not self.stopping.is_set()

    async def _renew(self) -> bool:
        started = time.monotonic()
        try:
            held = await leases.acquire(
                self.sessions, LEASE, self.holder, LEASE_TTL_S, self.fraud.clock()
            )
        except Exception as exc:  # the database is down or not migrated yet: not held
            log.warning("ml lease: control-plane database unavailable (%s)", type(exc).__name__)
            self.lease_held = self.standby = False
            return False
        if held:
            # Count the TTL from before the request: the database may have taken a while.
            self._lease_until = started + LEASE_TTL_S
        self.lease_held = held
        self.standby = not held
        return held

    async def run(self) -> None:
        while not self.stopping.is_set():
            if not await self._renew():
                # Standing by: look again in a while; no database yet (the api migrates it
                # at its start): soon.
                await self._wait(RENEW_EVERY_S if self.standby else 1.0)
                continue
            log.info("ml lease held by %s: running the fraud and forecast agents", self.holder)
            tasks = [asyncio.create_task(agent.run(self.holding)) for agent in self.agents]
            try:
                while self.holding():
                    await self._wait(RENEW_EVERY_S)
                    if self.stopping.is_set() or not await self._renew():
                        break
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for agent in self.agents:
                    # A final checkpoint only while the lease is still ours: after it expired,
                    # a standby may be writing checkpoints of its own.
                    if self.lease_valid():
                        try:
                            await agent.stop()
                        except Exception:
                            log.exception("%s agent: final checkpoint failed", agent.name)
            if not self.stopping.is_set():
                log.warning("ml lease lost; standing by")
        if self.lease_held:
            await leases.release(self.sessions, LEASE, self.holder)
            self.lease_held = False

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
            agent.publisher.close()

    # -- http -------------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        running = all(agent.running for agent in self.agents)
        ready = running or self.standby
        body = {
            "ready": ready,
            "role": "active" if self.lease_held else "standby",
            "agents": {agent.name: agent.running for agent in self.agents},
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        lines = [
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total {time.process_time():.6f}",
            "# TYPE streambill_ml_lease_held gauge",
            f"streambill_ml_lease_held {int(self.lease_held)}",
        ]
        series = {
            "streambill_ml_records_total": ("counter", lambda a: a.records),
            "streambill_ml_events_learned": ("gauge", lambda a: a.book_events()),
            "streambill_ml_checkpoints_total": ("counter", lambda a: a.checkpoints),
            "streambill_ml_skipped_total": ("counter", lambda a: a.skipped),
            "streambill_ml_alerts_total": ("counter", lambda a: a.alerts),
        }
        for name, (kind, value) in series.items():
            lines.append(f"# TYPE {name} {kind}")
            for agent in self.agents:
                lines.append(f'{name}{{agent="{agent.name}"}} {value(agent)}')
        book = self.fraud.book
        lines += [
            "# TYPE streambill_ml_suspended_total counter",
            f"streambill_ml_suspended_total {self.fraud.suspended}",
            "# TYPE streambill_ml_labels_total counter",
            f'streambill_ml_labels_total{{agent="fraud"}} {book.labels if book else 0}',
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _main(settings: Settings) -> int:
    process = MlProcess(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.stopping.set)
    runner = web.AppRunner(process.web_app())
    await runner.setup()
    site = web.TCPSite(runner, settings.internal_host, settings.ml_port)
    await site.start()
    log.info("streambill ml: /readyz on http://127.0.0.1:%d", settings.ml_port)
    try:
        await process.run()
    finally:
        await runner.cleanup()
        process.close()
    log.info("streambill ml stopped")
    return 0


def run_ml(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.ml:
        log.info("online ML off (ML=0); nothing to run")
        return 0
    # Several dicts per scored event against millions of long-lived objects (tree nodes,
    # customers' features): the worker's young-generation threshold (gctune.py).
    apply_gc_threshold(settings.gc_gen0_threshold)
    return asyncio.run(_main(settings))

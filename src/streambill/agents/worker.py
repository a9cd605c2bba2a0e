"""``streambill worker``: the Faust app with all agents and their tables.

The worker never opens ClickHouse (only the api process may open an embedded chDB data
directory). It serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``settings.worker_port``.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streambill.agents import accounts as accounts_agent
from streambill.agents import balances as balances_agent
from streambill.agents.accounts import AccountCache
from streambill.agents.app import BytesKeyed, create_faust_app, create_tables
from streambill.agents.balances import BalancesRuntime
from streambill.agents.publisher import Publisher
from streambill.engine.balances import BalanceEngine
from streambill.settings import Settings
from streambill.streams import topics

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings) -> tuple[faust.App, BalancesRuntime]:
    """The Faust app with tables, agents, timers and web pages wired together."""
    app = create_faust_app(settings)
    tables = create_tables(app, settings)
    publisher = Publisher(settings.bootstrap)
    engine = BalanceEngine(
        partitions=settings.topic_partitions,
        accounts=AccountCache(BytesKeyed(tables.accounts.data)),
        balances=BytesKeyed(tables.balances.data),
        dedup=BytesKeyed(tables.dedup.data),
        unknown_customer_retry_s=settings.unknown_customer_retry_s,
        dedup_window_s=settings.dedup_window_s,
    )
    runtime = BalancesRuntime(engine, publisher)
    accounts_agent.register(app, tables.accounts, publisher)
    balances_agent.register(app, settings, runtime)
    state = {"parked_index_stale": True}

    def owned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.USAGE}

    def ready() -> bool:
        recovery = app.tables.recovery
        return bool(not app.rebalancing and recovery.completed.is_set())

    @app.timer(1.0)
    async def sweep_parked() -> None:
        if not ready():
            return
        if state["parked_index_stale"]:
            engine.rebuild_parked_index()
            state["parked_index_stale"] = False
        await runtime.sweep(owned())

    @app.timer(3600.0)
    async def expire_dedup() -> None:
        if ready():
            await runtime.expire_dedup(owned())

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        runtime.forget_partitions({tp.partition for tp in revoked if tp.topic == topics.USAGE})
        state["parked_index_stale"] = True

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        state["parked_index_stale"] = True

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        is_ready = ready()
        body = {
            "ready": is_ready,
            "rebalancing": bool(app.rebalancing),
            "partitions": sorted(owned()),
            "accounts": len(tables.accounts.data),
            "batches": runtime.batches,
        }
        return web.json(body, status=200 if is_ready else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app, runtime


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; the exit code is non-zero after an agent crash."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app, runtime = build_worker_app(settings)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    logging.getLogger("streambill").setLevel(logging.INFO)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        runtime.publisher.close()
    return 0

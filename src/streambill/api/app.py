"""``create_app(settings)``: the FastAPI application and its lifespan.

Start-up order: open ClickHouse (chDB or a server), apply pending schema migrations, start
the sink (which seeds the live ledger view). Shut-down: stop the sink (it flushes and commits
what it buffered), close ClickHouse.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from streambill import __version__
from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.migrate import migrate
from streambill.analytics.sink import ClickHouseSink
from streambill.api import errors
from streambill.api.deps import ApiRuntime
from streambill.api.routes import admin, customers, health
from streambill.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clickhouse = await AsyncClickHouse.open(settings.clickhouse_dsn)
        try:
            applied = await clickhouse.run(migrate)
            log.info("clickhouse migrations applied: %s", applied or "none pending")
            sink = ClickHouseSink(settings, clickhouse)
            await sink.start()
            app.state.runtime = ApiRuntime(settings=settings, clickhouse=clickhouse, sink=sink)
            try:
                yield
            finally:
                app.state.runtime = None
                await sink.stop()
        finally:
            await clickhouse.close()

    app = FastAPI(
        title="streambill",
        version=__version__,
        description="Streaming real-time prepaid billing: balances, ledger, analytics.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(customers.router)
    app.include_router(admin.router)
    return app

"""``create_app(settings)``: the FastAPI application and its lifespan.

Start-up order: open ClickHouse (chDB or a server) and apply its migrations; apply the
control-plane migrations (Alembic) and open its database; start the producer, the outbox
relay, the ClickHouse sink (which seeds the live ledger view) and the live feed for
WebSockets. Shut-down runs the other way: nothing that produces stops before what it feeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from streambill import __version__
from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.migrate import migrate as migrate_clickhouse
from streambill.analytics.sink import ClickHouseSink
from streambill.api import errors, ws
from streambill.api.deps import ApiRuntime
from streambill.api.graphql import graphql_router
from streambill.api.ingest import UsageProducer
from streambill.api.limits import BodyLimit
from streambill.api.live import LiveFeed, LiveHub
from streambill.api.ratelimit import LoginGuard, RateLimiter
from streambill.api.routes import (
    admin,
    alerts,
    api_keys,
    auth,
    commissions,
    customers,
    deadletters,
    fraud,
    health,
    insights,
    payouts,
    resellers,
    stripe,
    topups,
    usage,
    users,
)
from streambill.api.ws import StreamContext
from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.outbox import OutboxRelay
from streambill.control.plane import ControlPlane
from streambill.dashboards import pages as dashboards
from streambill.payments.gateway import StripeConfig, StripeGateway
from streambill.payments.reconcile import Reconciler
from streambill.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Streaming real-time prepaid billing: tenants, balances, ledger, live streams.

Authenticate with `Authorization: Bearer <key>` (an API key, a session token from
`POST /v2/auth/login`, or the platform admin's key). Errors are
`{"error": {"code": "...", "message": "..."}}` with stable codes; another tenant's object
answers 404. Amounts people give are decimal strings ("12.50"); amounts the system emits are
integer micros (1 unit = 1,000,000 micros).
"""


async def _open_control(settings: Settings, stack: AsyncExitStack) -> ControlPlane:
    url = settings.control_db_url
    revision = await asyncio.to_thread(db.migrate, url)
    log.info("control-plane migrations applied; at revision %s", revision)
    engine = db.open_engine(url)
    stack.push_async_callback(engine.dispose)
    sessions = db.session_factory(engine)
    return ControlPlane(sessions=sessions, auth=Authenticator(sessions, settings.admin_api_key))


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            clickhouse = await AsyncClickHouse.open(settings.clickhouse_dsn)
            stack.push_async_callback(clickhouse.close)
            applied = await clickhouse.run(migrate_clickhouse)
            log.info("clickhouse migrations applied: %s", applied or "none pending")
            control = await _open_control(settings, stack)
            producer = UsageProducer(settings)
            producer.start()
            stack.push_async_callback(producer.stop)
            relay = OutboxRelay(control.sessions, producer)
            if settings.outbox_relay:
                control.on_outbox = relay.wake
                relay.start()
                stack.push_async_callback(relay.stop)
            sink = ClickHouseSink(settings, clickhouse)
            await sink.start()
            stack.push_async_callback(sink.stop)
            hub = LiveHub()
            feed = LiveFeed.from_settings(settings, hub)
            await feed.start()
            stack.push_async_callback(feed.stop)
            stack.push_async_callback(hub.close_all)  # sockets close before the feed stops
            stripe_config = StripeConfig.from_settings(settings)
            gateway = StripeGateway(stripe_config) if stripe_config else None
            if gateway is not None:
                stack.push_async_callback(gateway.aclose)
                # Lost webhooks: one replica (lease) lists Stripe's recent events and takes
                # in what never arrived (payments/reconcile.py).
                reconciler = Reconciler(
                    control,
                    gateway,
                    interval_s=settings.reconcile_interval_s,
                    lookback_s=settings.reconcile_lookback_s,
                )
                reconciler.start()
                stack.push_async_callback(reconciler.stop)
            app.state.stream = StreamContext(
                hub=hub, authenticate=control.auth.authenticate, allowed_origins=settings.origins
            )
            app.state.runtime = ApiRuntime(
                settings=settings,
                clickhouse=clickhouse,
                sink=sink,
                control=control,
                producer=producer,
                relay=relay,
                limiter=RateLimiter(settings.api_rate_limit_per_s, settings.api_rate_burst),
                login_guard=LoginGuard(
                    per_address_per_min=settings.login_per_address_per_min,
                    per_email_per_min=settings.login_attempts_per_min,
                    overall_per_s=settings.login_overall_per_s,
                ),
                hub=hub,
                feed=feed,
                stripe=gateway,
            )
            try:
                yield
            finally:
                app.state.runtime = None

    app = FastAPI(
        title="streambill",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        default_bytes=settings.api_max_body_bytes,
        usage_bytes=settings.api_max_usage_body_bytes,
    )
    routers = (
        health,
        auth,
        resellers,
        commissions,
        customers,
        fraud,
        topups,
        api_keys,
        users,
        usage,
        stripe,
        admin,
        payouts,
        insights,
        deadletters,
        alerts,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(graphql_router())
    app.include_router(ws.router)
    dashboards.mount(app)
    return app

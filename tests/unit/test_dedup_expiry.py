"""Dedup records: bounded by rate x window, expired on time at any rate, and a payment can
never be applied twice however late a copy of it comes."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
from test_engine_balances import PARTITIONS, Feed, account, make_engine, payment, run, usage

from streambill.engine.balances import (
    EXPIRY_BUCKET_S,
    STALE_MARGIN_S,
    BalanceEngine,
    ExpiryIndex,
    _Batch,
    record_time,
)
from streambill.streams import topics

# 10x the bench's offered rate (2,000 events/s), on a simulated clock.
RATE = 20_000
WINDOW_S = 20  # the window scaled down with the run, so the table fits a unit test
RUN_EVERY_S = 1  # the expiry timer (one bucket)


def engine_with_window(window_s: int) -> BalanceEngine:
    engine = make_engine(account())
    engine.dedup_window_s = window_s
    engine.expiry = ExpiryIndex(bucket_s=RUN_EVERY_S)
    return engine


def remember_second(engine: BalanceEngine, second: int, start: int) -> None:
    """Write one simulated second's dedup records through the engine's own batch path."""
    batch = _Batch(engine, float(second))
    for n in range(start, start + RATE):
        key = b"cus_%d\x1fu\x1fevt-%012d" % (n % 5_000, n)
        batch.remember(key, n % PARTITIONS, n, n)
    batch.finish()


def test_the_table_holds_rate_times_window_and_expiry_never_falls_behind() -> None:
    engine = engine_with_window(WINDOW_S)
    t0 = 1_800_000_000
    sizes = []
    for s in range(5 * WINDOW_S):  # five windows of simulated time, 2 million records
        now = t0 + s
        remember_second(engine, now, s * RATE)
        tombstones = engine.expire_dedup(set(range(PARTITIONS)), now + 0.5)
        # Never behind: after a run nothing older than the window is left.
        oldest = min(record_time(v) for v in engine.dedup.values())
        assert oldest >= now + 0.5 - WINDOW_S, (s, oldest, now)
        if s >= WINDOW_S:
            assert len(tombstones) == RATE  # each run removes the second that expired
            sizes.append(len(engine.dedup))
    expected = RATE * WINDOW_S
    assert all(abs(size - expected) <= 0.05 * expected for size in sizes), (min(sizes), max(sizes))
    assert len(engine.expiry) == len(engine.dedup)  # the index holds what the table holds


def test_bytes_per_record_are_what_the_docs_say() -> None:
    """docs/architecture.md gives ~200 bytes per record (key, value, dict slot, index slot)
    for keys of the usual length: the table's memory is rate x window x that."""
    engine = engine_with_window(3600)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    remember_second(engine, 1_800_000_000, 0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_record = used / len(engine.dedup)
    assert 120 <= per_record <= 240, per_record


def test_an_old_payment_is_dead_lettered_not_applied_again() -> None:
    engine, feed = make_engine(account()), Feed()
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)

    def paid(event_id: str, at: datetime) -> dict[str, object]:
        return payment(event_id, "20.00") | {"occurred_at": at.isoformat()}

    first = run(engine, [feed.rec(topics.PAYMENTS, paid("pi_1", now))], now.timestamp())
    assert first.applied == 1
    # 30 days later (usage records of that time are long gone): still a duplicate.
    month = now.timestamp() + day_s(30)
    engine.expire_dedup(set(range(PARTITIONS)), month)
    again = run(engine, [feed.rec(topics.PAYMENTS, paid("pi_1", now))], month)
    assert (again.applied, again.duplicates) == (0, 1)
    # Past the payment window its record expires, and the same record produced again is
    # older than the window: dead-lettered with the reason, never applied.
    later = now.timestamp() + engine.payment_window_s + day_s(1)
    engine.expire_dedup(set(range(PARTITIONS)), later)
    assert engine.dedup == {}
    stale = run(engine, [feed.rec(topics.PAYMENTS, paid("pi_1", now))], later)
    assert stale.applied == 0 and stale.dead_letters == 1
    (letter,) = [orjson.loads(m.value or b"") for m in stale.emit if m.topic == topics.DEADLETTER]
    assert letter["error_code"] == "stale_payment"
    # Just inside the horizon it is still recognised as a duplicate, not applied twice.
    engine2, feed2 = make_engine(account()), Feed()
    run(engine2, [feed2.rec(topics.PAYMENTS, paid("pi_2", now))], now.timestamp())
    edge = now.timestamp() + engine2.payment_window_s - STALE_MARGIN_S - 1
    engine2.expire_dedup(set(range(PARTITIONS)), edge)
    dup = run(engine2, [feed2.rec(topics.PAYMENTS, paid("pi_2", now))], edge)
    assert (dup.applied, dup.duplicates, dup.dead_letters) == (0, 1, 0)


def test_a_payment_dated_in_the_future_keeps_its_record_until_it_is_stale() -> None:
    engine, feed = make_engine(account()), Feed()
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    ahead = now + timedelta(days=3)  # a clock ahead of ours
    doc = payment("pi_f", "5.00") | {"occurred_at": ahead.isoformat()}
    run(engine, [feed.rec(topics.PAYMENTS, doc)], now.timestamp())
    # Past the window counted from our clock, but not from the payment's time: still there.
    later = now.timestamp() + engine.payment_window_s + day_s(1)
    engine.expire_dedup(set(range(PARTITIONS)), later)
    dup = run(engine, [feed.rec(topics.PAYMENTS, doc)], later)
    assert (dup.applied, dup.duplicates) == (0, 1)


def test_usage_records_expire_after_the_window_and_the_index_survives_recovery() -> None:
    engine, feed = make_engine(account()), Feed()
    t = 1_800_000_000.0
    run(engine, [feed.rec(topics.USAGE, usage(f"u{i}")) for i in range(10)], t)
    # A restart restores the table from the changelog: the index is rebuilt from it.
    restored = BalanceEngine(
        partitions=PARTITIONS,
        accounts=engine.accounts,
        balances=engine.balances,
        dedup=dict(engine.dedup),
        unknown_customer_retry_s=60,
        dedup_window_s=engine.dedup_window_s,
    )
    restored.rebuild_dedup_index()
    assert restored.expire_dedup(set(range(PARTITIONS)), t + 3600) == []
    past = t + restored.dedup_window_s + EXPIRY_BUCKET_S
    gone = restored.expire_dedup(set(range(PARTITIONS)), past)
    assert len(gone) == 10 and all(m.value is None for m in gone)
    assert restored.dedup == {}


def day_s(days: int) -> int:
    return days * 86_400

"""The whole data plane on the real embedded broker: worker, api, sink, chDB.

a. 100k usage events over 1,000 customers, 3 meters, 5% producer duplicates, payments mixed
   in: every balance equals an independent Decimal recomputation; every invariant holds.
b. The same kind of run with the worker SIGKILLed at random moments and restarted.
c. Malformed inputs land in the dead-letter topic with their codes; neighbours apply.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import (
    Model,
    Stack,
    account,
    dedupe_entries,
    invariant_violations,
    producer,
    read_topic,
    send,
)
from streambill.broker.testing import memory_broker
from streambill.streams import topics

# Payments older than the payment window (400 days) are dead-lettered as stale.
RECENT = datetime.now(UTC).replace(microsecond=0).isoformat()
pytestmark = pytest.mark.integration
PARTITIONS = 4
METERS = {
    "call_minutes": ["0.15", "0.0125", "0.09"],
    "sms": ["0.07", "0.011"],
    "ai_tokens_1k": ["0.002", "0.0031", "0.0007"],
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with memory_broker(PARTITIONS, data_dir=tmp_path / "broker") as broker:
        s = Stack(broker.bootstrap, tmp_path, PARTITIONS)
        try:
            yield s
        finally:
            s.stop()


def workload(
    seed: int, customers: int, events: int, dup_rate: float = 0.05
) -> tuple[list[tuple[str, dict[str, Any] | bytes, str]], Model, int]:
    """Accounts, then usage with duplicates and payments mixed in; the expected model."""
    rng = random.Random(seed)
    model = Model()
    msgs: list[tuple[str, dict[str, Any] | bytes, str]] = []
    ids = [f"cus_{seed}_{i:04d}" for i in range(customers)]
    for i, cid in enumerate(ids):
        cur = ("EUR", "EUR", "USD", "GBP")[i % 4]
        prices = {m: rng.choice(p) for m, p in METERS.items()}
        model.prices[cid] = {m: Decimal(p) for m, p in prices.items()}
        msgs.append((topics.ACCOUNTS, account(cid, cur, prices, f"res_{i % 7}"), cid))
    currency = {cid: ("EUR", "EUR", "USD", "GBP")[i % 4] for i, cid in enumerate(ids)}
    sent: list[tuple[str, dict[str, Any], str]] = []
    unique = 0
    for n in range(events):
        if sent and rng.random() < dup_rate:
            msgs.append(rng.choice(sent))  # a producer retry: same event again
            continue
        cid = ids[
            min(int(rng.paretovariate(1.2)) - 1, customers - 1)
            if n % 3 == 0
            else rng.randrange(customers)
        ]
        if rng.random() < 0.03:
            kind = rng.choice(["topup", "topup", "topup", "refund", "chargeback", "adjustment"])
            amount = f"{rng.randint(1, 5000) / 100:.2f}"
            if kind == "adjustment" and rng.random() < 0.5:
                amount = "-" + amount
            doc: dict[str, Any] = {
                "event_id": f"pay-{n}",
                "customer_id": cid,
                "kind": kind,
                "amount": amount,
                "currency": currency[cid],
                "occurred_at": RECENT,
                "provider": "stripe",
                "provider_ref": f"pi_{n}",
            }
            model.payment(cid, doc["event_id"], kind, amount)
            item = (topics.PAYMENTS, doc, cid)
        else:
            meter = rng.choice(list(METERS))
            qty = f"{rng.lognormvariate(0.9, 0.8):.3f}"
            doc = {
                "event_id": f"ev-{n}",
                "customer_id": cid,
                "meter": meter,
                "quantity": qty,
                "occurred_at": "2026-11-25T10:00:00+00:00",
                "attributes": {"n": n},
            }
            model.usage(cid, doc["event_id"], meter, qty)
            item = (topics.USAGE, doc, cid)
        unique += 1
        msgs.append(item)
        sent.append(item)
    return msgs, model, unique


def produce_all(bootstrap: str, msgs: list[tuple[str, Any, str]]) -> None:
    p = producer(bootstrap)
    for topic, doc, key in msgs:
        send(p, topic, doc, key)
    assert p.flush(60) == 0


def produce_spread(
    bootstrap: str, msgs: list[tuple[str, Any, str]], *, every: int, pause_s: float
) -> tuple[threading.Thread, threading.Event]:
    """Produce ``msgs`` in a thread, pausing after every ``every`` messages so that kills
    land mid-stream; the event is set once every message is acknowledged."""
    done = threading.Event()

    def produce() -> None:
        p = producer(bootstrap)
        for i, (topic, doc, key) in enumerate(msgs):
            send(p, topic, doc, key)
            if i % every == 0:
                p.poll(0)
                time.sleep(pause_s)
        assert p.flush(60) == 0
        done.set()

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    return feeder, done


def check_ledger(stack: Stack, model: Model, expected_entries: int) -> dict[str, list[dict]]:
    entries = read_topic(
        stack.bootstrap, topics.LEDGER, until=expected_entries, timeout_s=240, distinct="entry_id"
    )
    per_customer = dedupe_entries(entries)
    found = sum(len(v) for v in per_customer.values())
    if found != expected_entries:
        letters = read_topic(stack.bootstrap, topics.DEADLETTER, until=0, timeout_s=5)
        codes = sorted({d["error_code"] for d in letters})
        proc, port = stack.workers[0]
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).text
            ready += " positions=" + httpx.get(f"http://127.0.0.1:{port}/positions", timeout=5).text
            metrics = [
                line
                for line in httpx.get(
                    f"http://127.0.0.1:{port}/metrics", timeout=5
                ).text.splitlines()
                if line.startswith("streambill_worker_events_total{")
            ]
        except httpx.HTTPError as exc:
            ready, metrics = f"unreachable: {exc}", []
        pytest.fail(
            f"{found} of {expected_entries} entries; {len(letters)} dead letters {codes}; "
            f"worker alive={proc.popen is not None and proc.popen.poll() is None} "
            f"ready={ready} {metrics}\n{proc.tail(60)}"
        )
    assert invariant_violations(per_customer) == []
    for cid in model.prices:
        final = per_customer[cid][-1]["balance_micros"] if per_customer.get(cid) else 0
        assert final == model.micros(cid), cid
    return per_customer


def test_100k_events_balances_match_an_independent_recomputation(stack: Stack) -> None:
    stack.start_worker()
    stack.start_api()
    msgs, model, unique = workload(seed=1, customers=1000, events=100_000)
    started = time.monotonic()
    produce_all(stack.bootstrap, msgs)
    per_customer = check_ledger(stack, model, unique)
    elapsed = time.monotonic() - started
    print(f"100k run: {unique} entries in {elapsed:.1f} s ({unique / elapsed:.0f}/s)")

    # The api agrees with the ledger for every customer (its live view trails the sink, which
    # now syncs each ClickHouse part before it commits: 100k events take it longer to drain
    # on a loaded 2-core machine, so the deadline is 60 s; it missed 30 s once in CI).
    deadline = time.monotonic() + 60
    pending = set(per_customer)
    while pending and time.monotonic() < deadline:
        for cid in sorted(pending):
            r = stack.get(f"/v2/customers/{cid}/balance")
            last = per_customer[cid][-1]
            if r.status_code == 200 and r.json()["seq"] == last["seq"]:
                assert r.json()["balance_micros"] == last["balance_micros"] == model.micros(cid)
                pending.discard(cid)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} balances never caught up"

    # Sum over the ledger the api serves == the balance it reports (a heavy customer).
    heavy = max(per_customer, key=lambda c: len(per_customer[c]))
    entries: list[dict] = []
    before = None
    while True:
        page = stack.get(
            f"/v2/customers/{heavy}/ledger",
            limit=1000,
            **({"before_seq": before} if before else {}),
        ).json()
        entries += page["entries"]
        before = page["next_before_seq"]
        if before is None:
            break
    balance = stack.get(f"/v2/customers/{heavy}/balance").json()
    assert sum(e["amount_micros"] for e in entries) == balance["balance_micros"]
    assert [e["seq"] for e in entries] == list(range(len(entries), 0, -1))
    inv = stack.get("/v2/admin/ledger/invariants").json()
    assert inv["violations"] == []


def test_worker_killed_five_times_mid_run_reaches_the_same_state(stack: Stack) -> None:
    # The contract's wait for an unknown customer (60 s, not the suite's 5 s): a worker
    # restarted on a loaded machine may take longer than 5 s to have every account again,
    # and the usage waiting for them meanwhile was dead-lettered (seen once in CI: 4,021).
    stack.env["STREAMBILL_UNKNOWN_CUSTOMER_RETRY_S"] = "60"
    stack.start_worker()
    msgs, model, unique = workload(seed=2, customers=1000, events=100_000)
    rng = random.Random(99)
    feeder, done = produce_spread(stack.bootstrap, msgs, every=5000, pause_s=0.15)
    kills = 0
    while kills < 5:
        time.sleep(rng.uniform(0.5, 3.0))
        stack.workers[0][0].kill()
        kills += 1
        stack.restart_worker(0)
    feeder.join(timeout=300)
    assert done.is_set()
    check_ledger(stack, model, unique)


def test_malformed_inputs_are_dead_lettered_and_neighbours_apply(stack: Stack) -> None:
    stack.start_worker()
    p = producer(stack.bootstrap, **{"message.max.bytes": 4 * 1024 * 1024})
    send(p, topics.ACCOUNTS, account("cus_dl", "EUR", {"call_minutes": "0.10"}, None), "cus_dl")
    good = {
        "customer_id": "cus_dl",
        "meter": "call_minutes",
        "quantity": "1",
        "occurred_at": "2026-11-25T10:00:00+00:00",
    }
    bad: list[tuple[str, bytes | dict, str]] = [
        (topics.USAGE, b"{not json", "invalid_json"),
        (
            topics.USAGE,
            {k: v for k, v in good.items() if k != "meter"} | {"event_id": "m"},
            "invalid_event",
        ),
        (topics.USAGE, good | {"event_id": "t", "quantity": [1]}, "invalid_event"),
        (topics.USAGE, good | {"event_id": "n", "quantity": "-2"}, "invalid_event"),
        (topics.USAGE, good | {"event_id": "u", "meter": "fax_pages"}, "unknown_meter"),
        (
            topics.PAYMENTS,
            {
                "event_id": "pc",
                "customer_id": "cus_dl",
                "kind": "topup",
                "amount": "5.00",
                "currency": "USD",
                "occurred_at": RECENT,
            },
            "currency_mismatch",
        ),
        (
            topics.PAYMENTS,
            {  # a payment older than the payment window: whether it was applied is unknown
                "event_id": "old",
                "customer_id": "cus_dl",
                "kind": "topup",
                "amount": "5.00",
                "currency": "EUR",
                "occurred_at": (datetime.now(UTC) - timedelta(days=401)).isoformat(),
            },
            "stale_payment",
        ),
        (topics.USAGE, b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', "invalid_event"),
    ]
    n = 0
    for topic, doc, _ in bad:
        send(p, topics.USAGE, good | {"event_id": f"ok-{n}"}, "cus_dl")
        n += 1
        send(p, topic, doc, "cus_dl")
    send(p, topics.USAGE, good | {"event_id": f"ok-{n}"}, "cus_dl")
    n += 1
    # Usage for a customer nobody created: retried (parked), dead-lettered after 60 s.
    send(p, topics.USAGE, good | {"customer_id": "cus_ghost", "event_id": "g1"}, "cus_ghost")
    assert p.flush(30) == 0

    ledger = read_topic(stack.bootstrap, topics.LEDGER, until=n, timeout_s=60)
    assert sorted(e["source_event_id"] for e in ledger) == sorted(f"ok-{i}" for i in range(n))
    letters = read_topic(stack.bootstrap, topics.DEADLETTER, until=len(bad) + 1, timeout_s=120)
    codes = sorted(d["error_code"] for d in letters)
    assert codes == sorted([c for _, _, c in bad] + ["unknown_customer"])
    ghost = next(d for d in letters if d["error_code"] == "unknown_customer")
    assert ghost["key"] == "cus_ghost" and "g1" in ghost["value"]
    big = next(d for d in letters if len(d["value"]) > 1024 * 1024)
    assert big["topic"] == topics.USAGE and big["offset"] >= 0


def test_two_workers_each_know_every_account_and_apply_their_partitions(stack: Stack) -> None:
    # Each worker owns half of the partitions but must know every account: before the
    # accounts follower, each knew only the half its own accounts agent wrote, and the other
    # half's usage was parked and dead-lettered as unknown_customer.
    stack.start_worker()
    stack.start_worker()
    msgs, model, unique = workload(seed=3, customers=400, events=8_000)
    produce_all(stack.bootstrap, msgs)
    check_ledger(stack, model, unique)
    for _, port in stack.workers:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        assert ready["accounts"] == 400, ready
    letters = read_topic(stack.bootstrap, topics.DEADLETTER, until=0, timeout_s=3)
    assert letters == []


def test_a_surviving_worker_takes_over_a_killed_workers_partitions(stack: Stack) -> None:
    # Failover, not restart: the killed worker never comes back, so the survivor recovers
    # the killed one's balances and dedup tables from their changelogs (which must end
    # exactly where its last publish ended) and carries on from its published positions.
    stack.start_worker()
    stack.start_worker()
    msgs, model, unique = workload(seed=5, customers=400, events=20_000)
    feeder, done = produce_spread(stack.bootstrap, msgs, every=2000, pause_s=0.3)
    time.sleep(2.0)
    stack.workers[1][0].kill()
    feeder.join(timeout=180)
    assert done.is_set()
    check_ledger(stack, model, unique)
    port = stack.workers[0][1]
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert ready["partitions"] == list(range(PARTITIONS)), ready


def test_faust_stream_path_with_a_kill_reaches_the_same_state(stack: Stack) -> None:
    # STREAMBILL_WORKER_DIRECT_SOURCE=0: records come through Faust's stream, and the
    # source positions alone keep them in order across a SIGKILL and the restart.
    stack.env["STREAMBILL_WORKER_DIRECT_SOURCE"] = "0"
    stack.start_worker()
    msgs, model, unique = workload(seed=4, customers=300, events=20_000)
    feeder, done = produce_spread(stack.bootstrap, msgs, every=2000, pause_s=0.2)
    time.sleep(1.5)
    stack.workers[0][0].kill()
    stack.restart_worker(0)
    feeder.join(timeout=120)
    assert done.is_set()
    check_ledger(stack, model, unique)
    # The operator's view agrees: every source partition applied and published to its end.
    port = stack.workers[0][1]
    rows = httpx.get(f"http://127.0.0.1:{port}/positions", timeout=5).json()["partitions"]
    sources = [r for r in rows if r["topic"] in (topics.USAGE, topics.PAYMENTS)]
    assert len(sources) == 2 * PARTITIONS
    for row in sources:
        assert row["fetching"] and not row["direct"], row
        assert row["published"] == row["expected"] == row["highwater"], row

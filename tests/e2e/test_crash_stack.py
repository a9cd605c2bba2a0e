"""Fault injection on the whole ``streambill up`` stack (durable broker behind the journal).

Usage over HTTP (``POST /v2/usage``) and over Kafka (confluent-kafka, ``billing.usage.v1``)
and signed Stripe webhooks (Checkout top-ups) flow concurrently while the stack is killed:

- (a) five times the whole stack at once: SIGSTOP to ``up`` and every process below it (pid
  files in ``<data_dir>/run``, their process groups, the whole process tree), then SIGKILL to
  all, then ``up`` again on the same data dir;
- (b) only the broker (the journal proxy and Tansu): ``up`` notices and stops the rest with
  exit code 1, then starts again;
- (c) a kill during a clean stop: SIGTERM to ``up``, and while it stops, SIGSTOP + SIGKILL to
  everything.

What a client was told is acknowledged (a 202, a delivery report without error, a 2xx to a
webhook) must be applied exactly once; what was sent without an acknowledgement is re-sent
with the same id (as a real client would) and may have been applied, but then once and
priced right. At the end every customer's ledger runs ``seq`` 1..n, every balance equals an
independent Decimal recomputation, and ClickHouse (the api's ledger reads, the invariant
check) holds exactly the entries of ``billing.ledger.v1``.

``CRASH_SEED=<n>`` repeats a run's prices and kill moments (the traffic itself depends on
timing). Run with ``-s`` to see the figures: acknowledgements per round, kill moments,
restart times, what was re-sent or given up, and the final ledger check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stripe
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from apiworld import STRIPE_WEBHOOK_SECRET
from pipeline import dedupe_entries, invariant_violations
from recorded_stripe import fixture
from streambill.broker.process import pid_alive
from streambill.broker.testing import (
    OutputReader,
    consumer_config,
    pids_in,
    process_group_members,
    producer_config,
    stack_env,
    stop_stack,
)
from streambill.stack import READY_LINE
from streambill.streams import topics
from waiting import NotYet, eventually

pytestmark = pytest.mark.e2e

MICRO = Decimal("0.000001")
CUSTOMERS = 10
READY_TIMEOUT_S = 150.0
SETTLE_TIMEOUT_S = 120.0
CALL_PRICES = ("0.15", "0.0125", "0.333333", "1.05", "0.07")
SMS_PRICES = ("0.0075", "0.009", "0.123457")
QUANTITIES = ("1", "1.5", "0.333", "2.25", "0.5", "7", "0.001", "3.125", "0.0005")
CHANNELS = ("http", "kafka", "webhook")
KAFKA_IN_FLIGHT = 200
ABANDON = 0.3  # of the events unacknowledged at a kill, never re-sent
KILLS = 5
ACK_AGE_MAX_S = 2.0  # traffic flows at a kill: something was acknowledged this recently
STOP_TIMEOUT_S = 150.0  # up stops children one after another, up to 30 s each


# -- processes ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children[st[1]].append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stack_processes(up_pid: int, run_dir: Path) -> tuple[set[int], dict[str, int]]:
    """Every process of a stack: ``up``, its process tree, the process groups its children
    lead (each child runs in a session of its own) and what the pid files name. Returns the
    pids and the pid files that name one of them."""
    family = {up_pid} | _descendants(up_pid)
    # Only groups led by one of ours: ``up`` itself shares the test runner's group.
    for pgrp in {st[2] for pid in family if (st := _stat(pid)) is not None} & family:
        family |= set(process_group_members(pgrp))
    named = {name: pid for name, pid in pids_in(run_dir).items() if pid in family}
    return family, named


@dataclass
class Kill:
    pids: set[int]
    named: dict[str, int]
    frozen_s: float  # from the first SIGSTOP to the last SIGKILL


def freeze_and_kill(up: subprocess.Popen[str], run_dir: Path) -> Kill:
    """SIGSTOP ``up`` and every process of its stack (until no new one shows up), check
    they all stopped, then SIGKILL them all and check they are gone."""
    started = time.monotonic()
    os.kill(up.pid, signal.SIGSTOP)  # first: a stopped ``up`` starts no further child
    frozen: set[int] = set()
    named: dict[str, int] = {}
    while True:
        found, pid_files = stack_processes(up.pid, run_dir)
        named.update(pid_files)
        new = found - frozen
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new

    def all_stopped() -> bool:
        return all((st := _stat(pid)) is None or st[0] in "TtZX" for pid in frozen)

    eventually(all_stopped, 10, "every process of the stack stopped (SIGSTOP)", 0.01)
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    frozen_s = time.monotonic() - started
    assert up.wait(30) == -signal.SIGKILL
    eventually(
        lambda: not [pid for pid in frozen if pid_alive(pid)], 30, "every process killed", 0.05
    )
    return Kill(frozen, named, frozen_s)


class Stack:
    """``streambill up`` on one data dir (durable broker, no demo, a Stripe webhook secret),
    started again and again on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.env = stack_env(data_dir, workers=1, storage="durable")
        self.env["STREAMBILL_STRIPE_WEBHOOK_SECRET"] = STRIPE_WEBHOOK_SECRET
        self.api = f"http://127.0.0.1:{self.env['STREAMBILL_API_PORT']}"
        self.bootstrap = f"127.0.0.1:{self.env['STREAMBILL_BROKER_PORT']}"
        self.proc: subprocess.Popen[str] | None = None
        self.output: OutputReader | None = None
        self.starts: list[float] = []
        self.traffic: list[Traffic] = []

    def start(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streambill.cli", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputReader(self.proc)
        try:
            self.output.wait_for(READY_LINE, READY_TIMEOUT_S)
        except TimeoutError as exc:
            raise AssertionError(f"up did not become ready: {exc}\n{self.log_tails()}") from None
        took = time.monotonic() - started
        self.starts.append(took)
        return took

    @property
    def up(self) -> subprocess.Popen[str]:
        assert self.proc is not None
        return self.proc

    @property
    def key(self) -> str:
        return (self.data_dir / "admin_api_key").read_text().strip()

    def client(self, timeout_s: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.api, headers=headers, timeout=timeout_s, trust_env=False)

    def processes(self) -> tuple[set[int], dict[str, int]]:
        return stack_processes(self.up.pid, self.run_dir)

    def kill_all(self) -> Kill:
        return freeze_and_kill(self.up, self.run_dir)

    def stop(self) -> int:
        assert self.output is not None
        return stop_stack(self.up, self.output, STOP_TIMEOUT_S)

    def text(self) -> str:
        return self.output.text() if self.output is not None else ""

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(out)

    def cleanup(self) -> None:
        for traffic in self.traffic:
            traffic.stopping.set()
        for traffic in self.traffic:
            for thread in traffic.threads:
                thread.join(60)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.kill_all()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


# -- what the clients sent and were told ---------------------------------------------------


@dataclass(frozen=True)
class Usage:
    event_id: str
    customer_id: str
    meter: str
    quantity: str
    channel: str

    def doc(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "meter": self.meter,
            "quantity": self.quantity,
            "occurred_at": "2026-12-01T10:00:00+00:00",
        }


@dataclass(frozen=True)
class Topup:
    payment_intent: str
    customer_id: str
    cents: int
    payload: bytes  # the Stripe event; a redelivery sends the same body, newly signed


@dataclass
class Book:
    """Every event the clients sent, which ones were acknowledged, and what waits for a
    re-send. Thread-safe."""

    rng: random.Random
    prices: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    topups: dict[str, Topup] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # source event id -> channel
    retry: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sends: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)  # answers that are not "try again"
    abandoned: set[str] = field(default_factory=set)  # never acknowledged, never re-sent
    last_ack_at: float = 0.0  # time.monotonic() of the latest acknowledgement
    lock: threading.Lock = field(default_factory=threading.Lock)
    _n: int = 0

    def customers(self) -> list[str]:
        return sorted(self.prices)

    def ack_age(self) -> float:
        """Seconds since the latest acknowledgement: traffic is flowing when it is small."""
        with self.lock:
            return time.monotonic() - self.last_ack_at

    def acks(self) -> Counter[str]:
        with self.lock:
            return Counter(self.acked.values())

    def _next(self) -> int:
        self._n += 1
        return self._n

    def take_usage(self, channel: str, count: int, fresh: bool) -> list[Usage]:
        """Events to send: re-sends first, then new ones (when ``fresh``)."""
        with self.lock:
            queue = self.retry[channel]
            out = [self.usage[eid] for eid in queue[:count]]
            del queue[:count]
            while fresh and len(out) < count:
                cid = self.rng.choice(self.customers())
                meter = self.rng.choice(("call_minutes", "sms"))
                event = Usage(
                    f"{channel[0]}-{self._next()}",
                    cid,
                    meter,
                    self.rng.choice(QUANTITIES),
                    channel,
                )
                self.usage[event.event_id] = event
                out.append(event)
            self.sends[channel] += len(out)
            return out

    def take_topup(self, fresh: bool) -> Topup | None:
        with self.lock:
            queue = self.retry["webhook"]
            if queue:
                self.sends["webhook"] += 1
                return self.topups[queue.pop(0)]
            if not fresh:
                return None
            return self.new_topup(self.rng.choice(self.customers()), self.rng.randint(500, 5000))

    def new_topup(self, customer_id: str, cents: int) -> Topup:
        """A paid Checkout Session's ``checkout.session.completed`` (the recorded fixture);
        the caller holds ``lock``."""
        n = self._next()
        session = fixture("checkout_session_payment")
        session |= {
            "id": f"cs_test_crash_{n}",
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": f"pi_crash_{n}",
            "amount_subtotal": cents,
            "amount_total": cents,
            "metadata": {"customer_id": customer_id},
        }
        event = {
            "id": f"evt_crash_{n}",
            "object": "event",
            "api_version": "2024-06-20",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": session},
        }
        topup = Topup(f"pi_crash_{n}", customer_id, cents, orjson.dumps(event))
        self.topups[topup.payment_intent] = topup
        self.sends["webhook"] += 1
        return topup

    def ack(self, ids: list[str], channel: str) -> None:
        with self.lock:
            self.last_ack_at = time.monotonic()
            for eid in ids:
                self.acked.setdefault(eid, channel)

    def again(self, ids: list[str], channel: str) -> None:
        with self.lock:
            queue = self.retry[channel]
            queue.extend(i for i in dict.fromkeys(ids) if i not in self.acked and i not in queue)

    def unacknowledged(self) -> int:
        """Events sent, never acknowledged and not given up (queued for a re-send or in
        flight)."""
        with self.lock:
            return len(self.usage) + len(self.topups) - len(self.acked) - len(self.abandoned)

    def abandon(self, fraction: float) -> int:
        """Give up on a random ``fraction`` of what waits for a re-send (a client that gave
        up): those may or may not be applied, but at most once."""
        with self.lock:
            count = 0
            for queue in self.retry.values():
                dropped = {eid for eid in queue if self.rng.random() < fraction}
                queue[:] = [eid for eid in queue if eid not in dropped]
                self.abandoned |= dropped
                count += len(dropped)
            return count

    def refused(self, what: str) -> None:
        with self.lock:
            self.refusals.append(what)

    # the independent model
    def expected_micros(self, source_event_id: str, customer_id: str) -> int | None:
        """What applying this event must do to the balance, or None: not one we sent."""
        usage = self.usage.get(source_event_id)
        if usage is not None and usage.customer_id == customer_id:
            price = self.prices[customer_id][usage.meter]
            charge = (Decimal(usage.quantity) * price).quantize(MICRO, ROUND_HALF_EVEN)
            return -int(charge / MICRO)
        topup = self.topups.get(source_event_id)
        if topup is not None and topup.customer_id == customer_id:
            return topup.cents * 10_000
        return None

    def customer_of(self, source_event_id: str) -> str:
        if source_event_id in self.usage:
            return self.usage[source_event_id].customer_id
        return self.topups[source_event_id].customer_id


def stripe_signature(payload: bytes) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), STRIPE_WEBHOOK_SECRET, timestamp=int(time.time())
    )
    return header


# -- traffic -------------------------------------------------------------------------------


class Traffic:
    """Three clients at once: HTTP usage, Kafka usage, Stripe webhooks. ``fresh=False`` only
    re-sends what was never acknowledged."""

    def __init__(self, stack: Stack, book: Book, fresh: bool = True) -> None:
        self.stack = stack
        self.book = book
        self.fresh = fresh
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guard, args=(fn,), name=fn.__name__, daemon=True)
            for fn in (self._http_usage, self._kafka_usage, self._webhooks)
        ]
        stack.traffic.append(self)
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), f"traffic thread {thread.name} did not stop"
        assert not self.errors, self.errors

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def _http_usage(self) -> None:
        with self.stack.client(timeout_s=5.0) as client:
            while not self.stopping.is_set():
                batch = self.book.take_usage("http", self.book.rng.randint(1, 10), self.fresh)
                if not batch:
                    if self.stopping.wait(0.05):
                        break
                    continue
                body = {"events": [u.doc() for u in batch]}
                ids = [u.event_id for u in batch]
                try:
                    answer = client.post("/v2/usage", json=body)
                except httpx.HTTPError:
                    self.book.again(ids, "http")
                    self.stopping.wait(0.2)  # pacing while the stack is away
                    continue
                if answer.status_code == 202:
                    rejected = {e["index"] for e in answer.json()["errors"]}
                    for index in rejected:
                        self.book.refused(f"usage {ids[index]}: {answer.text[:300]}")
                    self.book.ack([i for n, i in enumerate(ids) if n not in rejected], "http")
                else:
                    if answer.status_code < 500 and answer.status_code != 429:
                        self.book.refused(f"usage {answer.status_code}: {answer.text[:300]}")
                    self.book.again(ids, "http")
                    self.stopping.wait(0.2)

    def _kafka_usage(self) -> None:
        producer = Producer(
            {
                **producer_config(self.stack.bootstrap),
                "partitioner": "murmur2_random",
                "message.timeout.ms": 20_000,
                "log.connection.close": False,
                "logger": logging.getLogger("crash.kafka"),
            }
        )
        outstanding: set[str] = set()
        lock = threading.Lock()

        def report(eid: str) -> Callable[[KafkaError | None, Message], None]:
            def delivered(err: KafkaError | None, _msg: Message) -> None:
                with lock:
                    outstanding.discard(eid)
                if err is None:
                    self.book.ack([eid], "kafka")
                else:
                    self.book.again([eid], "kafka")

            return delivered

        try:
            while not self.stopping.is_set():
                with lock:
                    full = len(outstanding) >= KAFKA_IN_FLIGHT
                if full:  # the broker is away or slow: no more than this unacknowledged
                    producer.poll(0.05)
                    continue
                batch = self.book.take_usage("kafka", 1, self.fresh)
                if not batch:
                    producer.poll(0.05)
                    continue
                (event,) = batch
                with lock:
                    outstanding.add(event.event_id)
                try:
                    producer.produce(
                        topics.USAGE,
                        orjson.dumps(event.doc()),
                        event.customer_id.encode(),
                        on_delivery=report(event.event_id),
                    )
                except BufferError:
                    with lock:
                        outstanding.discard(event.event_id)
                    self.book.again([event.event_id], "kafka")
                producer.poll(0)
                self.stopping.wait(0.003)  # a few hundred events per second
        finally:
            # In flight at the kill: voided, so never counted as acknowledged.
            producer.purge()
            producer.flush(15)
            with lock:
                lost = list(outstanding)
            self.book.again(lost, "kafka")

    def _webhooks(self) -> None:
        with httpx.Client(base_url=self.stack.api, timeout=5.0, trust_env=False) as client:
            while not self.stopping.is_set():
                topup = self.book.take_topup(self.fresh)
                if topup is None:
                    if self.stopping.wait(0.05):
                        break
                    continue
                headers = {
                    "Stripe-Signature": stripe_signature(topup.payload),
                    "Content-Type": "application/json",
                }
                try:
                    answer = client.post(
                        "/v2/stripe/webhook", content=topup.payload, headers=headers
                    )
                except httpx.HTTPError:
                    self.book.again([topup.payment_intent], "webhook")
                    self.stopping.wait(0.2)
                    continue
                if answer.is_success:
                    self.book.ack([topup.payment_intent], "webhook")
                else:
                    if answer.status_code < 500:
                        self.book.refused(f"webhook {answer.status_code}: {answer.text[:300]}")
                    self.book.again([topup.payment_intent], "webhook")
                self.stopping.wait(0.04)


# -- reading the ledger --------------------------------------------------------------------


def read_topic_to_end(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Every message of ``topic`` up to the end offsets it had when the read started."""
    consumer = Consumer(consumer_config(bootstrap, f"crash-reader-{time.monotonic_ns()}"))
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while todo:
            assert time.monotonic() < deadline, f"{topic}: not read to {ends} in {timeout_s} s"
            for msg in consumer.consume(10_000, 0.5):
                assert msg.error() is None, msg.error()
                value = msg.value()
                if value is not None:
                    out.append(orjson.loads(value))
                offset = msg.offset()
                if offset is not None and offset + 1 >= ends[msg.partition() or 0]:
                    todo.discard(msg.partition() or 0)
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, names: tuple[str, ...]) -> dict[tuple[str, int], int]:
    consumer = Consumer(consumer_config(bootstrap, f"crash-ends-{time.monotonic_ns()}"))
    try:
        out = {}
        for topic in names:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                tp = TopicPartition(topic, p)
                out[(topic, p)] = consumer.get_watermark_offsets(tp, timeout=10)[1]
        return out
    finally:
        consumer.close()


def api_metrics(client: httpx.Client) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def api_ledger(client: httpx.Client, customer_id: str) -> list[dict[str, Any]]:
    """The customer's whole ledger through ``GET /v2/customers/{id}/ledger`` (ClickHouse,
    plus entries the sink consumed but has not flushed: none once it is quiet)."""
    entries: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if before is not None:
            params["before_seq"] = before
        page = client.get(f"/v2/customers/{customer_id}/ledger", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        entries += body["entries"]
        before = body["next_before_seq"]
        if before is None:
            return sorted(entries, key=lambda e: e["seq"])


@dataclass
class Settled:
    per_customer: dict[str, list[dict[str, Any]]]
    balances: dict[str, dict[str, Any]]
    quiet: bool
    waited_s: float


def settle(stack: Stack, book: Book) -> Settled:
    """Poll until the pipeline is quiet: no outbox row pending, the sink's buffer flushed,
    the ledger, usage and payments topics unchanged since the previous poll, every
    acknowledged event in the ledger, and every api balance at the ledger's last ``seq``.
    At the deadline the last state is returned (``quiet`` False) for the assertions to name
    what is missing."""
    started = time.monotonic()
    watched = (topics.LEDGER, topics.USAGE, topics.PAYMENTS)
    last: dict[str, Any] = {"ends": None, "state": None}

    def quiet() -> bool:
        # In this order: a balance at the ledger's last seq means the sink consumed the
        # entry; an empty sink buffer read after it means the entry is in ClickHouse.
        ends = end_offsets(stack.bootstrap, watched)
        per = dedupe_entries(read_topic_to_end(stack.bootstrap, topics.LEDGER))
        with stack.client() as client:
            balances = {
                cid: client.get(f"/v2/customers/{cid}/balance").json() for cid in book.customers()
            }
            metrics = api_metrics(client)
        last["state"] = Settled(per, balances, False, time.monotonic() - started)
        stable, last["ends"] = ends == last["ends"], ends
        applied = {e["source_event_id"] for rows in per.values() for e in rows}
        with book.lock:
            missing = set(book.acked) - applied
        return (
            stable
            and not missing
            and all(
                balances[cid].get("seq") == (rows[-1]["seq"] if (rows := per.get(cid)) else 0)
                for cid in book.customers()
            )
            and metrics.get("streambill_outbox_pending") == 0
            and metrics.get("streambill_sink_buffered_rows") == 0
            and metrics.get('streambill_sink_lag_messages{topic="billing.ledger.v1"}') == 0
        )

    try:
        eventually(quiet, SETTLE_TIMEOUT_S, "the pipeline quiet", every_s=1.0)
        settled: Settled = last["state"]
        settled.quiet = True
    except NotYet:
        settled = last["state"]
    settled.waited_s = time.monotonic() - started
    return settled


def check_ledger(stack: Stack, book: Book) -> dict[str, list[dict[str, Any]]]:
    """Settle, then assert exactly-once, gap-free seq, balances and ClickHouse == topic."""
    settled = settle(stack, book)
    per = settled.per_customer
    entries = [e for rows in per.values() for e in rows]
    problems: list[str] = []
    # Every acknowledged event applied, and nothing applied that we did not send.
    applied = Counter(e["source_event_id"] for e in entries)
    with book.lock:
        acked = dict(book.acked)
    missing = sorted(set(acked) - set(applied))
    for eid in missing[:20]:
        where = book.usage.get(eid) or book.topups.get(eid)
        problems.append(f"acknowledged ({acked[eid]}) but not in the ledger: {eid} {where}")
    twice = {eid: n for eid, n in applied.items() if n > 1}
    if twice:
        problems.append(f"applied more than once: {dict(list(twice.items())[:20])}")
    problems += invariant_violations(per)[:20]
    expected: dict[str, int] = defaultdict(int)
    for eid in acked:
        amount = book.expected_micros(eid, book.customer_of(eid))
        assert amount is not None
        expected[book.customer_of(eid)] += amount
    unacked_applied: Counter[str] = Counter()  # by channel
    for e in entries:
        want = book.expected_micros(e["source_event_id"], e["customer_id"])
        if want is None:
            problems.append(f"an entry for nothing we sent: {e}")
            continue
        if e["amount_micros"] != want:
            problems.append(f"priced {e['amount_micros']}, expected {want}: {e}")
        if e["source_event_id"] not in acked:
            usage = book.usage.get(e["source_event_id"])
            unacked_applied[usage.channel if usage is not None else "webhook"] += 1
            expected[e["customer_id"]] += want
    for cid in book.customers():
        rows = per.get(cid, [])
        on_ledger = rows[-1]["balance_micros"] if rows else 0
        in_api = settled.balances[cid].get("balance_micros")
        if not on_ledger == in_api == expected[cid]:
            problems.append(
                f"{cid}: recomputed {expected[cid]}, ledger {on_ledger}, api balance {in_api}"
            )
    # ClickHouse: the api's ledger reads and its invariant check against the topic.
    with stack.client() as client:
        stored = {cid: api_ledger(client, cid) for cid in book.customers()}
        violations = client.get("/v2/admin/ledger/invariants").json()["violations"]
        kpis = client.get("/v2/admin/kpis").json()
    keys = (
        *("entry_id", "source_event_id", "customer_id", "kind", "seq"),
        *("amount_micros", "balance_micros", "currency", "meter", "quantity"),
    )
    for cid in book.customers():
        topic_rows = [tuple(e.get(k) for k in keys) for e in per.get(cid, [])]
        ch_rows = [tuple(e.get(k) for k in keys) for e in stored[cid]]
        if topic_rows != ch_rows:
            only_topic = sorted(set(topic_rows) - set(ch_rows))[:5]
            only_ch = sorted(set(ch_rows) - set(topic_rows))[:5]
            problems.append(
                f"{cid}: ClickHouse {len(ch_rows)} entries, topic {len(topic_rows)}; "
                f"only in the topic {only_topic}; only in ClickHouse {only_ch}"
            )
    if violations:
        problems.append(f"ClickHouse invariant violations: {violations[:10]}")
    if kpis["ledger_entries"] != len(entries):
        problems.append(
            f"ClickHouse holds {kpis['ledger_entries']} ledger rows, the topic {len(entries)}"
        )
    if book.refusals:
        problems.append(f"refused: {book.refusals[:10]}")
    figures = {
        "entries": len(entries),
        "acknowledged": dict(book.acks()),
        "sends (re-sends included)": dict(book.sends),
        "unacknowledged but applied": dict(unacked_applied),
        "never acknowledged, not applied": sum(1 for eid in book.usage if eid not in acked)
        + sum(1 for pi in book.topups if pi not in acked)
        - unacked_applied.total(),
        "settled in s": round(settled.waited_s, 1),
    }
    print(f"ledger check: {figures}")
    if not settled.quiet:
        problems.insert(0, f"the pipeline was not quiet within {SETTLE_TIMEOUT_S:.0f} s")
    assert not problems, "\n".join(problems) + "\n" + stack.log_tails()
    return per


_AT_REST = """
import json, sys
from streambill.analytics.client import connect
client = connect("chdb://" + sys.argv[1])
rows = client.query(
    "SELECT entry_id, source_event_id, customer_id, kind, seq, amount_micros, balance_micros"
    " FROM ledger FINAL ORDER BY customer_id, seq, entry_id"
).result_rows
raw = client.query("SELECT count() FROM ledger").result_rows[0][0]
print(json.dumps({"rows": [list(r) for r in rows], "raw": raw}))
"""


def check_clickhouse_at_rest(data_dir: Path, per: dict[str, list[dict[str, Any]]]) -> None:
    """With the stack stopped: chDB's ledger table, read directly, is the topic's ledger."""
    ran = subprocess.run(
        [sys.executable, "-c", _AT_REST, str(data_dir / "clickhouse")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    stored = orjson.loads(ran.stdout.splitlines()[-1])
    keys = (
        *("entry_id", "source_event_id", "customer_id", "kind", "seq"),
        *("amount_micros", "balance_micros"),
    )
    topic = sorted(
        (tuple(e[k] for k in keys) for rows in per.values() for e in rows),
        key=lambda r: (r[2], r[4], r[0]),
    )
    rows = [tuple(r) for r in stored["rows"]]
    only_ch, only_topic = sorted(set(rows) - set(topic)), sorted(set(topic) - set(rows))
    assert rows == topic, (
        f"ClickHouse at rest: {len(rows)} entries, topic {len(topic)}; only in ClickHouse "
        f"{only_ch[:5]}, only in the topic {only_topic[:5]}"
    )
    print(f"ClickHouse at rest: {len(rows)} entries (raw rows {stored['raw']}) == the topic")


# -- scenario pieces -----------------------------------------------------------------------


def open_accounts(stack: Stack, book: Book) -> None:
    """Customers with prices through the REST api, each credited by one webhook top-up,
    which also proves every account reached the worker."""
    rng = book.rng
    with stack.client() as client:
        for n in range(CUSTOMERS):
            prices = {"call_minutes": rng.choice(CALL_PRICES), "sms": rng.choice(SMS_PRICES)}
            created = client.post(
                "/v2/customers",
                json={
                    "name": f"Crash {n}",
                    "currency": "EUR",
                    "prices": [{"meter": m, "unit_price": p} for m, p in prices.items()],
                },
            )
            assert created.status_code == 201, created.text
            cid = created.json()["id"]
            book.prices[cid] = {m: Decimal(p) for m, p in prices.items()}
    with httpx.Client(base_url=stack.api, timeout=10, trust_env=False) as hooks:
        for cid in book.customers():
            with book.lock:
                topup = book.new_topup(cid, 5000)
            headers = {"Stripe-Signature": stripe_signature(topup.payload)}
            answer = hooks.post("/v2/stripe/webhook", content=topup.payload, headers=headers)
            assert answer.status_code == 200, answer.text
            book.ack([topup.payment_intent], "webhook")

    def credited() -> bool:
        with stack.client() as client:
            return all(
                client.get(f"/v2/customers/{cid}/balance").json().get("seq", 0) >= 1
                for cid in book.customers()
            )

    eventually(credited, 60, "every customer credited by its first top-up", 0.2)


def traffic_until_acked(stack: Stack, book: Book, rng: random.Random) -> tuple[Traffic, float]:
    """Start traffic, wait until each channel got an acknowledgement in this round, then a
    random moment more. Returns the running traffic and that moment (s)."""
    before = book.acks()
    traffic = Traffic(stack, book)
    eventually(
        lambda: all(book.acks()[c] > before[c] for c in CHANNELS),
        60,
        "every channel acknowledged in this round",
    )
    delay = rng.uniform(0.5, 4.0)
    time.sleep(delay)  # the kill moment: random, not a wait for anything
    return traffic, delay


def resend_unacknowledged(stack: Stack, book: Book) -> int:
    """Re-send (same ids) what was never acknowledged, until all of it is."""
    waiting = book.unacknowledged()
    traffic = Traffic(stack, book, fresh=False)
    try:
        eventually(lambda: book.unacknowledged() == 0, 60, "every re-sent event acknowledged")
    finally:
        traffic.stop()
    return waiting


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Stacks a test started; whatever still runs at its end is frozen and killed."""
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.cleanup()


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("CRASH_SEED") or time.time_ns() % 1_000_000)
    print(f"\nCRASH_SEED={seed}")
    return random.Random(seed)


def assert_gone(kill: Kill) -> None:
    alive = [pid for pid in kill.pids if pid_alive(pid)]
    assert not alive, f"still alive after SIGKILL: {alive}"


# -- the tests -----------------------------------------------------------------------------


def test_whole_stack_killed_five_times_loses_nothing_acknowledged(
    tmp_path: Path, stacks: list[Stack], rng: random.Random
) -> None:
    stack = Stack(tmp_path / "data")
    stacks.append(stack)
    book = Book(random.Random(rng.random()))
    print(f"first start: {stack.start():.1f} s")
    open_accounts(stack, book)
    for round_no in range(1, KILLS + 1):
        before = book.acks()
        traffic, delay = traffic_until_acked(stack, book, rng)
        at_kill, ack_age = book.acks(), book.ack_age()
        kill = stack.kill_all()
        traffic.stop()
        assert_gone(kill)
        # Mid-traffic: every channel was acknowledged in this round, the last ack just now.
        grew = {c: at_kill[c] - before[c] for c in CHANNELS}
        assert all(n > 0 for n in grew.values()) and ack_age < ACK_AGE_MAX_S, (grew, ack_age)
        # The kill reached every part of the stack, broker and journal proxy included.
        assert {"broker", "journal", "worker-0", "ml", "api"} <= set(kill.named), kill.named
        print(
            f"round {round_no}: {delay:.2f} s after every channel's first ack (last ack "
            f"{ack_age * 1000:.0f} ms before), froze and killed {len(kill.pids)} processes "
            f"({', '.join(sorted(kill.named))}, up) in {kill.frozen_s * 1000:.0f} ms; "
            f"acknowledged this round {grew}; unacknowledged {book.unacknowledged()}, of "
            f"them given up {book.abandon(ABANDON)}"
        )
        print(f"  restart {round_no}: ready in {stack.start():.1f} s")
    resent = resend_unacknowledged(stack, book)
    print(f"re-sent {resent} unacknowledged events, all acknowledged now")
    per = check_ledger(stack, book)
    assert stack.stop() == 0, stack.text()
    check_clickhouse_at_rest(stack.data_dir, per)
    print(f"starts (s): {[round(s, 1) for s in stack.starts]}")


def test_broker_killed_stack_stops_and_restarts_without_loss(
    tmp_path: Path, stacks: list[Stack], rng: random.Random
) -> None:
    stack = Stack(tmp_path / "data")
    stacks.append(stack)
    book = Book(random.Random(rng.random()))
    print(f"first start: {stack.start():.1f} s")
    open_accounts(stack, book)
    before = book.acks()
    traffic, delay = traffic_until_acked(stack, book, rng)
    at_kill, ack_age = book.acks(), book.ack_age()
    everything, named = stack.processes()
    assert {"broker", "journal"} <= set(named), named
    # The broker: the journal proxy and Tansu (and the proxy's own data Tansu, if it runs one).
    broker = {n: pid for n, pid in named.items() if n == "journal" or n.startswith("broker")}
    for pid in broker.values():
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        code = stack.up.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"up did not stop after the broker died:\n{stack.text()}") from None
    exited_s = time.monotonic() - killed
    traffic.stop()
    assert code == 1, stack.text()
    # Children waiting on the dead broker get a short stop, not their Kafka timeouts.
    assert exited_s < 20, f"up took {exited_s:.1f} s to stop after the broker died"
    assert "the broker died; stopping the stack" in stack.text(), stack.text()
    alive = [pid for pid in everything if pid_alive(pid)]
    assert not alive, f"left running after up stopped: {alive}"
    grew = {c: at_kill[c] - before[c] for c in CHANNELS}
    assert all(n > 0 for n in grew.values()) and ack_age < ACK_AGE_MAX_S, (grew, ack_age)
    steps = [line.split(": ", 1)[-1] for line in stack.text().splitlines() if "pid=" in line]
    print(
        f"{', '.join(sorted(broker))} SIGKILLed {delay:.2f} s after every channel's first ack "
        f"(last ack {ack_age * 1000:.0f} ms before); up exited with {code} {exited_s:.1f} s "
        f"later; acknowledged {grew}; unacknowledged {book.unacknowledged()}, of them given up "
        f"{book.abandon(ABANDON)}\n  up's stop: {[s for s in steps if 'started' not in s]}"
    )
    print(f"restart: ready in {stack.start():.1f} s")
    resent = resend_unacknowledged(stack, book)
    print(f"re-sent {resent} unacknowledged events, all acknowledged now")
    check_ledger(stack, book)
    assert stack.stop() == 0, stack.text()


def test_kill_during_a_clean_stop_loses_nothing_acknowledged(
    tmp_path: Path, stacks: list[Stack], rng: random.Random
) -> None:
    stack = Stack(tmp_path / "data")
    stacks.append(stack)
    book = Book(random.Random(rng.random()))
    print(f"first start: {stack.start():.1f} s")
    open_accounts(stack, book)
    before = book.acks()
    traffic, delay = traffic_until_acked(stack, book, rng)
    at_term, ack_age = book.acks(), book.ack_age()
    stack.up.send_signal(signal.SIGTERM)
    stopping_for = rng.uniform(0.5, 3.0)
    time.sleep(stopping_for)  # a random moment of the stop, not a wait
    # Still stopping: up has not exited, it announced the stop and has not finished it.
    assert stack.up.poll() is None, f"the stop was over before the kill:\n{stack.text()}"
    kill = stack.kill_all()
    traffic.stop()
    assert_gone(kill)
    text = stack.text()
    assert "streambill up: stopping" in text and "streambill up: stopped" not in text, text
    grew = {c: at_term[c] - before[c] for c in CHANNELS}
    assert all(n > 0 for n in grew.values()) and ack_age < ACK_AGE_MAX_S, (grew, ack_age)
    stopped = [line.split("stopped ")[1] for line in text.splitlines() if "stopped " in line]
    print(
        f"SIGTERM {delay:.2f} s after every channel's first ack (last ack {ack_age * 1000:.0f} "
        f"ms before); {stopping_for:.2f} s into the stop froze and killed {len(kill.pids)} "
        f"processes ({', '.join(sorted(kill.named))}, up; stopped by then: {stopped}); "
        f"acknowledged {grew}; unacknowledged {book.unacknowledged()}, of them given up "
        f"{book.abandon(ABANDON)}"
    )
    print(f"restart: ready in {stack.start():.1f} s")
    resent = resend_unacknowledged(stack, book)
    print(f"re-sent {resent} unacknowledged events, all acknowledged now")
    check_ledger(stack, book)
    assert stack.stop() == 0, stack.text()

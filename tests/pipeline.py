"""Test support for the whole data plane: worker and api processes, producers, ledger reads,
an independent Decimal model of the balances, and the ARCHITECTURE invariants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from streambill.broker.process import free_port
from streambill.broker.testing import consumer_config, producer_config

MICRO = Decimal("0.000001")


@dataclass
class Proc:
    """A ``streambill`` child process with its log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_ready(url: str, proc: Proc, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{proc.name} not ready in {timeout_s} s:\n{proc.tail()}")


class Stack:
    """Worker(s) and api against a broker that a test fixture started."""

    def __init__(self, bootstrap: str, data_dir: Path, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.admin_key = "sb_admin_test_key"
        self.api_port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMBILL_")}
        self.env = {
            **base,
            "STREAMBILL_DATA_DIR": str(data_dir),
            "STREAMBILL_KAFKA_BOOTSTRAP": bootstrap,
            "STREAMBILL_TOPIC_PARTITIONS": str(partitions),
            "STREAMBILL_API_PORT": str(self.api_port),
            "STREAMBILL_ADMIN_API_KEY": self.admin_key,
            "STREAMBILL_UNKNOWN_CUSTOMER_RETRY_S": "5",
            "STREAMBILL_KAFKA_FETCH_MAX_WAIT_MS": "20",  # the memory broker
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[tuple[Proc, int]] = []
        self.api: Proc | None = None

    def start_worker(self) -> Proc:
        port = free_port()
        n = len(self.workers)
        proc = Proc(
            f"worker-{n}",
            [sys.executable, "-m", "streambill.cli", "worker", "--web-port", str(port)],
            self.env,
            self.data_dir / f"worker-{n}.log",
        ).start()
        self.workers.append((proc, port))
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        return proc

    def restart_worker(self, index: int = 0) -> Proc:
        proc, port = self.workers[index]
        proc.start()
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        return proc

    def start_api(self) -> Proc:
        self.api = Proc(
            "api",
            [sys.executable, "-m", "streambill.cli", "api"],
            self.env,
            self.data_dir / "api.log",
        ).start()
        wait_ready(f"http://127.0.0.1:{self.api_port}/readyz", self.api)
        return self.api

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.api_port}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=30,
        )

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        for proc, _ in self.workers:
            proc.stop()


def producer(bootstrap: str, **extra: Any) -> Producer:
    return Producer({**producer_config(bootstrap), "partitioner": "murmur2_random", **extra})


def send(p: Producer, topic: str, doc: dict[str, Any] | bytes, key: str | None) -> None:
    value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    while True:
        try:
            p.produce(topic, value, key.encode() if key is not None else None)
            return
        except BufferError:
            p.poll(0.1)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: int,
    timeout_s: float,
    quiet_s: float = 3.0,
    distinct: str | None = None,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the start, once ``until`` messages (distinct values of
    the field ``distinct``, when given) arrived and the topic stayed quiet for a moment, or
    when ``timeout_s`` ran out."""
    consumer = Consumer({**consumer_config(bootstrap, f"t-{time.monotonic_ns()}")})
    meta = consumer.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
    consumer.assign(parts)
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, 0.5)
            for msg in batch:
                value = msg.value()
                if msg.error() is None and value is not None:
                    doc = orjson.loads(value)
                    out.append(doc)
                    if distinct is not None:
                        seen.add(doc[distinct])
            if batch:
                last_new = time.monotonic()
            count = len(seen) if distinct is not None else len(out)
            if count >= until and time.monotonic() - last_new > min(quiet_s, 1.0):
                break
        return out
    finally:
        consumer.close()


def account(cid: str, currency: str, prices: dict[str, str], reseller: str | None) -> dict:
    return {
        "account_id": cid,
        "kind": "customer",
        "parent_id": reseller,
        "name": f"Customer {cid}",
        "currency": currency,
        "status": "active",
        "prices": [{"meter": m, "unit_price": p} for m, p in prices.items()],
        "auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"},
        "updated_at": "2026-11-25T10:00:00+00:00",
    }


@dataclass
class Model:
    """The expected balances, computed independently with Decimal quantize."""

    prices: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    applied: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def usage(self, cid: str, event_id: str, meter: str, qty: str) -> None:
        if event_id in self.applied[cid]:
            return
        self.applied[cid].add(event_id)
        charge = (Decimal(qty) * self.prices[cid][meter]).quantize(MICRO, ROUND_HALF_EVEN)
        self.balances[cid] -= charge

    def payment(self, cid: str, event_id: str, kind: str, amount: str) -> None:
        if f"p:{event_id}" in self.applied[cid]:
            return
        self.applied[cid].add(f"p:{event_id}")
        sign = -1 if kind in ("refund", "chargeback") else 1
        self.balances[cid] += sign * Decimal(amount)

    def micros(self, cid: str) -> int:
        return int(self.balances[cid] / MICRO)


def dedupe_entries(entries: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Entries per customer by seq, one per entry_id; a replayed entry must be identical."""
    by_id: dict[str, dict[str, Any]] = {}
    for e in entries:
        held = by_id.get(e["entry_id"])
        if held is None:
            by_id[e["entry_id"]] = e
            continue
        same = {k: v for k, v in e.items() if k != "applied_at"}
        assert same == {k: v for k, v in held.items() if k != "applied_at"}, (held, e)
    per_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in by_id.values():
        per_customer[e["customer_id"]].append(e)
    for rows in per_customer.values():
        rows.sort(key=lambda r: r["seq"])
    return per_customer


def invariant_violations(per_customer: dict[str, list[dict[str, Any]]]) -> list[str]:
    """ARCHITECTURE's invariants over a customer's deduplicated ledger."""
    bad: list[str] = []
    for cid, rows in per_customer.items():
        seqs = [r["seq"] for r in rows]
        if seqs != list(range(1, len(rows) + 1)):
            bad.append(f"{cid}: seq {seqs[:10]}...")
        balance = 0
        sources: set[tuple[str, str]] = set()
        for r in rows:
            balance += r["amount_micros"]
            if r["balance_micros"] != balance:
                bad.append(f"{cid}: chain broken at seq {r['seq']}")
                break
            src = (r["source_topic"], r["source_event_id"])
            if src in sources:
                bad.append(f"{cid}: {src} applied twice")
            sources.add(src)
    return bad

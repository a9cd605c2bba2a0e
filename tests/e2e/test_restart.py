"""``streambill up`` on durable storage, driven by an independent Kafka client.

The CONTRACT's account, payment and usage JSON, produced with librdkafka's default
partitioner (as kcat does), show up in the api's balance within a second; after a stop and a
start on the same data dir every balance and ledger entry is unchanged and processing goes on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from streambill.agents.snapshots import read_offsets
from streambill.broker.testing import OutputReader, stack_env, stop_stack
from streambill.stack import READY_LINE
from streambill.streams import topics

pytestmark = pytest.mark.e2e
CUSTOMERS = [f"cus_r{i}" for i in range(20)]


class Up:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.api = f"http://127.0.0.1:{env['STREAMBILL_API_PORT']}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streambill.cli", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputReader(self.proc)
        self.output.wait_for(READY_LINE, 150)
        self.key = (Path(env["STREAMBILL_DATA_DIR"]) / "admin_api_key").read_text().strip()
        assert self.key not in self.output.text()  # the banner names the file, not the key

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.get(self.api + path, params=params, headers=headers, timeout=10)

    def stop(self) -> int:
        return stop_stack(self.proc, self.output, 120)

    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['STREAMBILL_BROKER_PORT']}"


def contract_events(n: int, start: int) -> list[tuple[str, bytes, bytes]]:
    msgs = []
    for cid in CUSTOMERS:
        for i in range(start, start + n):
            doc = {
                "event_id": f"call-{i}",
                "customer_id": cid,
                "meter": "call_minutes",
                "quantity": "1.5",
                "occurred_at": "2026-11-25T10:00:00+00:00",
                "attributes": {"call_id": str(i)},
            }
            msgs.append((topics.USAGE, cid.encode(), orjson.dumps(doc)))
    return msgs


def produce(
    bootstrap: str, msgs: list[tuple[str, bytes, bytes]], partitioner: str = "consistent_random"
) -> None:
    # librdkafka's default partitioner (kcat's too) puts some keys on another partition than
    # the Java client's murmur2; the worker re-routes those, at the cost of one more hop.
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner})
    for topic, key, value in msgs:
        p.produce(topic, value, key)
    assert p.flush(30) == 0


def wait_balance(up: Up, cid: str, seq: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = up.get(f"/v2/customers/{cid}/balance")
        if r.status_code == 200 and r.json()["seq"] >= seq:
            return r.json()
        time.sleep(0.02)
    raise AssertionError(f"{cid} did not reach seq {seq}: {r.status_code} {r.text}")


def snapshot(up: Up) -> dict[str, Any]:
    return {
        cid: (
            up.get(f"/v2/customers/{cid}/balance").json(),
            up.get(f"/v2/customers/{cid}/ledger", limit=1000).json()["entries"],
        )
        for cid in CUSTOMERS
    }


def test_contract_events_from_kafka_restart_keeps_every_balance(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, workers=1, storage="durable")
    up = Up(env)
    try:
        setup = []
        for cid in CUSTOMERS:
            account = {
                "account_id": cid,
                "kind": "customer",
                "parent_id": "res_1",
                "name": "Praxis Dr. Weber",
                "currency": "EUR",
                "status": "active",
                "prices": [{"meter": "call_minutes", "unit_price": "0.15"}],
                "auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"},
                "updated_at": "2026-11-25T10:00:00+00:00",
            }
            payment = {
                "event_id": f"pi_{cid}",
                "customer_id": cid,
                "kind": "topup",
                "amount": "20.00",
                "currency": "EUR",
                "occurred_at": datetime.now(UTC).isoformat(),  # payments must be recent
                "provider": "stripe",
                "provider_ref": f"pi_{cid}",
            }
            setup.append((topics.ACCOUNTS, cid.encode(), orjson.dumps(account)))
            setup.append((topics.PAYMENTS, cid.encode(), orjson.dumps(payment)))
        late = setup.pop()  # one customer's account and top-up are sent on the warm stack
        late_account = setup.pop()
        produce(up.bootstrap(), setup)
        for cid in CUSTOMERS[:-1]:
            wait_balance(up, cid, 1, 30)
        # A top-up right behind its account waits (parked) until the account reaches the
        # worker; it is applied when the account arrives, not at the next periodic sweep.
        sent = time.monotonic()
        produce(up.bootstrap(), [late_account, late])
        wait_balance(up, CUSTOMERS[-1], 1, 5)
        took_s = time.monotonic() - sent
        print(f"account + top-up -> api balance: {took_s * 1000:.0f} ms")
        assert took_s < 1.0, "a new account's top-up took over 1 s to reach the balance"
        # A single usage event, timed from produce to the api's balance (kcat with
        # -X partitioner=murmur2_random does the same).
        sent = time.monotonic()
        produce(up.bootstrap(), contract_events(1, 0)[:1], "murmur2_random")
        assert wait_balance(up, CUSTOMERS[0], 2, 5)["balance_micros"] == 19_775_000
        took_s = time.monotonic() - sent
        print(f"produce -> api balance: {took_s * 1000:.0f} ms")
        assert took_s < 1.0, "usage took over 1 s to reach the balance"

        produce(up.bootstrap(), contract_events(10, 1))
        for cid in CUSTOMERS:
            wait_balance(up, cid, 12 if cid == CUSTOMERS[0] else 11, 30)
        time.sleep(1.5)  # let the sink flush to ClickHouse before the stop
        before = snapshot(up)
        stopping = time.time()
        assert up.stop() == 0
    except BaseException:
        up.proc.kill()
        raise
    # The worker snapshotted its tables at the stop (before leaving its group), bounded by
    # the sealed ends of the changelog partitions it owned.
    tables = sorted((data_dir / "worker" / "tables").glob("*/balances.snapshot"))
    assert tables and tables[0].stat().st_mtime >= stopping, "no table snapshot at the stop"
    assert read_offsets(tables[0])

    restarted = time.monotonic()
    up = Up(env)
    print(f"restart to ready: {time.monotonic() - restarted:.1f} s")
    try:
        after = snapshot(up)
        assert after == before
        produce(up.bootstrap(), contract_events(5, 100))
        resumed = time.monotonic()
        for cid in CUSTOMERS:
            seq = before[cid][0]["seq"] + 5
            bal = wait_balance(up, cid, seq, 60)
            assert bal["balance_micros"] == before[cid][0]["balance_micros"] - 5 * 225_000
        print(f"processing after restart: {time.monotonic() - resumed:.1f} s")
        assert up.get("/v2/admin/ledger/invariants").json()["violations"] == []
        assert up.stop() == 0
    except BaseException:
        up.proc.kill()
        raise

    # The broker's journal lost (moved away): the stores are ahead of an empty broker, and
    # `up` refuses to start rather than roll every balance back.
    (data_dir / "broker-journal").rename(tmp_path / "journal-aside")
    worker_log = data_dir / "logs" / "worker-0.log"
    starts = worker_log.read_text().count(" start: ")
    refused = subprocess.run(
        [sys.executable, "-m", "streambill.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = refused.stdout + refused.stderr
    assert "the broker is behind ClickHouse, " in said, said[-3000:]
    assert "  - ClickHouse: billing." in said and f"mv {data_dir.resolve()} " in said
    assert worker_log.read_text().count(" start: ") == starts, "nothing started"

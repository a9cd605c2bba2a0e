"""Kill ``streambill ml`` mid-stream: its models resume from their checkpoint.

Usage events (for the fraud agent) and ledger entries (for the forecast agent) of three
customers whose ids hash to the same partition are produced at once, so the order the agents
read them in is fixed. The ML process is killed with SIGKILL once it has scored a third of
them, then started again. Afterwards:

- every event has a score, and every score (first emission and any replay after the restart)
  equals the score an uninterrupted :class:`FraudBook` gives the same events in the same order:
  the restarted model continued from its checkpoint (a model started from scratch scores 0
  until its first window of 500 events is full, and differs from then on);
- the forecasts in ``customer_forecasts`` equal those of an uninterrupted
  :class:`ForecastBook` after all entries: all 40 days learned, not just those after the kill.
"""

from __future__ import annotations

import random
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from apiworld import Api, running_api
from pipeline import Proc, producer, read_topic, send, wait_ready
from streambill.broker.process import free_port
from streambill.engine.balances import partition_for
from streambill.engine.forecast import Entry, ForecastBook
from streambill.engine.fraud import FraudBook, Usage
from streambill.streams.topics import FRAUD, LEDGER, USAGE

pytestmark = pytest.mark.integration

PARTITIONS = 4  # running_api's broker
DAYS = 40
START = datetime(2026, 9, 1, tzinfo=UTC)
CUTOFF = "0.90"


def same_partition_ids(count: int) -> list[str]:
    ids: list[str] = []
    n = 0
    while len(ids) < count:
        candidate = f"cus_mlkill_{n}"
        if partition_for(candidate.encode(), PARTITIONS) == 0:
            ids.append(candidate)
        n += 1
    return ids


def events(customers: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Usage events and the matching ledger entries, in time order."""
    rng = random.Random(11)
    usage: list[dict[str, Any]] = []
    for day in range(DAYS):
        for index, cid in enumerate(customers):
            weekend = (START + timedelta(days=day)).weekday() >= 5
            calls = rng.randint(3, 6) if weekend else rng.randint(20, 30) + 5 * index
            for _ in range(calls):
                at = START + timedelta(days=day, hours=rng.uniform(7, 19))
                minutes = round(rng.lognormvariate(1.0, 0.6), 2)
                country = "DE" if rng.random() < 0.9 else rng.choice(["AT", "CH", "FR"])
                if day > 25 and index == 1 and rng.random() < 0.05:  # account takeover
                    at = at.replace(hour=3)
                    minutes, country = round(rng.uniform(60, 200), 2), "KP"
                usage.append(
                    {
                        "event_id": f"e{len(usage)}",
                        "customer_id": cid,
                        "meter": "call_minutes",
                        "quantity": f"{minutes:.2f}",
                        "occurred_at": at.isoformat(),
                        "attributes": {"country": country},
                    }
                )
    usage.sort(key=lambda e: e["occurred_at"])
    ledger = []
    seq = dict.fromkeys(customers, 0)
    balance = dict.fromkeys(customers, 2_000_000_000)
    for event in usage:
        cid = event["customer_id"]
        seq[cid] += 1
        amount = -round(float(event["quantity"]) * 150_000)
        balance[cid] += amount
        ledger.append(
            {
                "entry_id": f"l-{event['event_id']}",
                "source_event_id": event["event_id"],
                "customer_id": cid,
                "reseller_id": None,
                "kind": "usage",
                "meter": "call_minutes",
                "quantity": event["quantity"],
                "amount_micros": amount,
                "balance_micros": balance[cid],
                "currency": "EUR",
                "seq": seq[cid],
                "occurred_at": event["occurred_at"],
                "applied_at": event["occurred_at"],
            }
        )
    return usage, ledger


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("ml-kill")
    env = {"STREAMBILL_ML_CHECKPOINT_MS": "300", "STREAMBILL_FRAUD_THRESHOLD": CUTOFF}
    with running_api(tmp, "sqlite", env) as running:
        yield running


def start_ml(api: Api, port: int) -> Proc:
    proc = Proc(
        "ml",
        [sys.executable, "-m", "streambill.cli", "ml", "--web-port", str(port)],
        api.stack.env,
        api.stack.data_dir / "ml.log",
    ).start()
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def learned(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'streambill_ml_events_learned\{agent="fraud"\} (\d+)', text)
    return int(found.group(1)) if found else 0


def scored(bootstrap: str) -> int:
    return len({s["score_id"] for s in read_topic(bootstrap, FRAUD, until=0, timeout_s=1)})


def test_models_resume_from_their_checkpoint_after_a_kill(api: Api) -> None:
    customers = same_partition_ids(3)
    usage, ledger = events(customers)
    port = free_port()
    ml = start_ml(api, port)
    out = producer(api.bootstrap)

    def produce() -> None:  # about 2,000 events a second: the kill lands mid-stream
        for start in range(0, len(usage), 100):
            chunk = zip(usage[start : start + 100], ledger[start : start + 100], strict=True)
            for event, entry in chunk:
                send(out, USAGE, event, event["customer_id"])
                send(out, LEDGER, entry, entry["customer_id"])
            out.flush(30)
            time.sleep(0.05)

    sender = threading.Thread(target=produce)
    sender.start()
    deadline = time.monotonic() + 60
    while learned(port) < len(usage) // 3:
        assert time.monotonic() < deadline, ml.tail()
        time.sleep(0.02)
    ml.kill()
    sender.join()
    before_restart = scored(api.bootstrap)
    assert before_restart < len(usage), "the kill came too late to be mid-stream"

    ml = start_ml(api, port)
    try:
        records = read_topic(
            api.bootstrap, FRAUD, until=len(usage), timeout_s=120, distinct="score_id"
        )
        time.sleep(1.5)  # one more checkpoint: the forecasts are written with it
    finally:
        ml.stop()

    log = (api.stack.data_dir / "ml.log").read_text()
    resumed = [int(n) for n in re.findall(r"fraud agent starts from its checkpoint \((\d+)", log)]
    assert resumed and 0 < resumed[0] < len(usage), log[-2000:]

    # Scores: the same as an uninterrupted book's, the replayed ones included.
    book = FraudBook()
    expected = {}
    for event in usage:
        record, _ = book.usage(
            Usage(
                event["event_id"],
                event["customer_id"],
                None,
                float(event["quantity"]),
                datetime.fromisoformat(event["occurred_at"]),
                event["attributes"]["country"],
            ),
            float(CUTOFF),
        )
        expected[record["score_id"]] = record["score"]
    got: dict[str, set[float]] = {}
    for record in records:
        got.setdefault(record["score_id"], set()).add(record["score"])
    assert set(got) == set(expected)
    differing = {sid: (got[sid], expected[sid]) for sid in got if got[sid] != {expected[sid]}}
    assert not differing, list(differing.items())[:5]
    replayed = len(records) - len(got)
    print(
        f"events {len(usage)}, scored before the kill {before_restart}, resumed with "
        f"{resumed[0]} learned, replayed {replayed}; all {len(got)} scores equal the "
        "uninterrupted model's"
    )
    after = list(expected.values())[resumed[0] :]
    assert after and max(after) > 0  # a reset model would have scored these 0

    # Forecasts: all days learned, equal to the uninterrupted book's.
    forecasts = ForecastBook()
    for entry in ledger:
        forecasts.entry(
            Entry(
                entry["customer_id"],
                entry["seq"],
                "usage",
                round(float(entry["quantity"]) * 1_000_000),
                entry["amount_micros"],
                entry["balance_micros"],
                "EUR",
                datetime.fromisoformat(entry["occurred_at"]),
            )
        )
    db = sqlite3.connect(api.stack.data_dir / "control.db")
    rows = {
        cid: (orjson.loads(units), days, balance)
        for cid, units, days, balance in db.execute(
            "select customer_id, daily_units, days_learned, balance_micros from customer_forecasts"
        )
    }
    for cid in customers:
        view = forecasts.forecast(cid)
        assert view is not None
        assert rows[cid] == (
            [f"{u:.3f}" for u in view.daily_units],
            DAYS - 1,
            view.balance_micros,
        )
        assert view.days_learned == DAYS - 1

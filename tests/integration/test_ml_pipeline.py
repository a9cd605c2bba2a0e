"""The online-ML agents in the running pipeline: api, worker and ``streambill ml`` together.

Two resellers: A sets its fraud threshold to 0 (every event is suspect to it), B keeps the
platform's (0.95; the model's first window scores 0). With ``FRAUD_AUTO_SUSPEND=1``:

- A's customer gets a ``fraud_suspected`` alert (with A's threshold) and is suspended through
  the control plane; B's customer is scored but neither alerted nor suspended;
- the scores reach ClickHouse and the fraud-scores endpoint;
- a manual label posted through the api reaches the fraud agent's classifier;
- B's customer, spending fast against a small balance, gets a ``predicted_depletion`` alert
  with a recommended top-up, and ``GET /v2/customers/{id}/forecast`` answers its forecast.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from apiworld import Api, running_api
from pipeline import Proc, read_topic, wait_ready
from streambill.broker.process import free_port
from streambill.streams.topics import ALERTS, FRAUD

pytestmark = pytest.mark.integration

PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("ml-pipeline")
    env = {"STREAMBILL_FRAUD_AUTO_SUSPEND": "1", "STREAMBILL_ML_CHECKPOINT_MS": "300"}
    with running_api(tmp, "sqlite", env) as running:
        running.stack.start_worker()
        yield running


def metric(port: int, name: str, agent: str | None = None) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    label = f'{{agent="{agent}"}}' if agent else ""
    found = re.search(rf"^{re.escape(name + label)} (\d+)", text, re.M)
    return int(found.group(1)) if found else -1


def wait_for(check: Any, timeout_s: float, what: str, explain: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{explain()}")


def test_fraud_and_forecast_agents_in_the_pipeline(api: Api) -> None:
    strict = api.ok("POST", "/v2/resellers", {"name": "Strict", "currency": "EUR"})["id"]
    lax = api.ok("POST", "/v2/resellers", {"name": "Lax", "currency": "EUR"})["id"]
    api.ok("PATCH", f"/v2/resellers/{strict}", {"fraud_threshold": "0.0"})
    suspect = api.ok(
        "POST",
        "/v2/customers",
        {"name": "Suspect", "currency": "EUR", "prices": PRICE, "reseller_id": strict},
    )["id"]
    busy = api.ok(
        "POST",
        "/v2/customers",
        {"name": "Busy", "currency": "EUR", "prices": PRICE, "reseller_id": lax},
    )["id"]
    api.ok(
        "POST",
        f"/v2/customers/{busy}/adjustments",
        {"amount": "30.00", "reason": "opening balance"},
    )
    port = free_port()
    ml = Proc(
        "ml",
        [sys.executable, "-m", "streambill.cli", "ml", "--web-port", str(port)],
        api.stack.env,
        api.stack.data_dir / "ml.log",
    ).start()
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", ml)
        now = datetime.now(UTC)
        events = [
            {
                "event_id": f"s{n}",
                "customer_id": suspect,
                "meter": "call_minutes",
                "quantity": "1",
                "occurred_at": (now + timedelta(seconds=n)).isoformat(),
            }
            for n in range(3)
        ] + [
            {  # 60 minutes in 20 minutes: 9.00 of 30.00 -> at this pace gone within hours
                "event_id": f"b{n}",
                "customer_id": busy,
                "meter": "call_minutes",
                "quantity": "3",
                "occurred_at": (now - timedelta(minutes=20) + timedelta(minutes=n)).isoformat(),
                "attributes": {"country": "DE"},
            }
            for n in range(20)
        ]
        assert api.ok("POST", "/v2/usage", {"events": events})["accepted"] == 23

        status = wait_for(
            lambda: api.ok("GET", f"/v2/customers/{suspect}")["status"] == "suspended",
            60,
            "the suspect's suspension",
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text + ml.tail(),
        )
        assert status
        assert api.ok("GET", f"/v2/customers/{busy}")["status"] == "active"

        alerts = read_topic(api.bootstrap, ALERTS, until=2, timeout_s=60)
        fraud_alerts = [a for a in alerts if a["kind"] == "fraud_suspected"]
        assert {a["customer_id"] for a in fraud_alerts} == {suspect}
        assert len(fraud_alerts) == 1  # one per customer per hour
        details = fraud_alerts[0]["details"]
        assert details["threshold"] == 0.0 and details["auto_suspended"] is True
        assert fraud_alerts[0]["reseller_id"] == strict

        depletion = [a for a in alerts if a["kind"] == "predicted_depletion"]
        assert [a["customer_id"] for a in depletion] == [busy]
        assert depletion[0]["reseller_id"] == lax
        assert depletion[0]["details"]["recommended_topup_micros"] % 5_000_000 == 0
        assert depletion[0]["details"]["recommended_topup_micros"] > 0

        # 23 usage events and the opening adjustment (a payment event)
        scores = read_topic(api.bootstrap, FRAUD, until=24, timeout_s=30, distinct="score_id")
        assert len({s["score_id"] for s in scores}) == 24
        assert {s["kind"] for s in scores} == {"usage", "adjustment"}
        by_customer = {s["customer_id"] for s in scores if s["suspected"]}
        assert by_customer == {suspect}

        def busy_scores() -> list[dict[str, Any]] | None:
            items = api.ok("GET", f"/v2/customers/{busy}/fraud-scores")["items"]
            return items if len(items) == 21 else None

        stored = wait_for(busy_scores, 60, "the busy customer's 21 scores in ClickHouse")
        usage_ids = {s["event_id"] for s in stored if s["kind"] == "usage"}
        assert usage_ids == {f"b{n}" for n in range(20)}

        before = metric(port, "streambill_ml_labels_total", "fraud")
        api.ok("POST", f"/v2/customers/{busy}/fraud-labels", {"fraud": False, "note": "known"})
        wait_for(
            lambda: metric(port, "streambill_ml_labels_total", "fraud") == before + 1,
            30,
            "the label at the fraud agent",
        )

        forecast = wait_for(
            lambda: (f := api.ok("GET", f"/v2/customers/{busy}/forecast"))["updated_at"] and f,
            30,
            "the busy customer's forecast",
        )
        assert forecast["customer_id"] == busy and forecast["currency"] == "EUR"
        assert len(forecast["daily_units"]) == 7 and forecast["daily_units"][0] > 0
        assert forecast["balance_micros"] == 21_000_000
        assert forecast["depletion_at"] is not None
        depleted_at = datetime.fromisoformat(forecast["depletion_at"])
        assert depleted_at - now < timedelta(hours=72)
        assert forecast["recommended_topup_micros"] > 0
    finally:
        ml.stop()

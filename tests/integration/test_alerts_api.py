"""``GET /v2/alerts`` through a running api: alerts written onto ``billing.alerts.v1`` the way
the agents write them reach ClickHouse through the sink and are read back per scope."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from apiworld import Api, World, build_world, running_api
from pipeline import producer, send
from streambill.streams import topics

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def _alert(n: int, customer: str, reseller: str | None, kind: str) -> dict[str, Any]:
    return {
        "alert_id": f"al_test_{n}",
        "customer_id": customer,
        "reseller_id": reseller,
        "kind": kind,
        "details": {"balance_micros": 1_500_000 - n, "note": f"alert {n}"},
        "created_at": (NOW + timedelta(seconds=n)).isoformat(),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, World]]:
    tmp: Path = tmp_path_factory.mktemp("alerts")
    with running_api(tmp) as api:
        w = build_world(api)
        o = w.objects
        alerts = [
            _alert(1, o["cus_a"], o["res_a"], "low_balance"),
            _alert(2, o["cus_a"], o["res_a"], "fraud_suspected"),
            _alert(3, o["cus_b"], o["res_b"], "depleted"),
            _alert(4, o["cus_d"], None, "predicted_depletion"),
            _alert(5, o["cus_a"], o["res_a"], "recovered"),
        ]
        p = producer(api.bootstrap)
        for alert in [*alerts, alerts[0]]:  # the first one twice: a replay
            send(p, topics.ALERTS, alert, alert["customer_id"])
        p.flush(10)
        deadline = time.monotonic() + 30
        while len(api.ok("GET", "/v2/alerts")["alerts"]) < len(alerts):
            assert time.monotonic() < deadline, "the sink did not store the alerts"
            time.sleep(0.2)
        yield api, w


def _ids(api: Api, token: str, **params: Any) -> list[str]:
    r = api.call("GET", "/v2/alerts", token, params=params)
    assert r.status_code == 200, r.text
    return [a["alert_id"] for a in r.json()["alerts"]]


def test_each_scope_reads_its_alerts_newest_first_each_once(world: tuple[Api, World]) -> None:
    api, w = world
    t = w.tokens
    assert _ids(api, t["admin"]) == [f"al_test_{n}" for n in (5, 4, 3, 2, 1)]
    assert _ids(api, t["reseller_a"]) == ["al_test_5", "al_test_2", "al_test_1"]
    assert _ids(api, t["reseller_b"]) == ["al_test_3"]
    # the suspect never reads that it is suspected
    assert _ids(api, t["customer_a"]) == ["al_test_5", "al_test_1"]
    assert _ids(api, t["service_a"]) == ["al_test_5", "al_test_1"]
    assert _ids(api, t["customer_b"]) == ["al_test_3"]


def test_filters_and_details(world: tuple[Api, World]) -> None:
    api, w = world
    t, o = w.tokens, w.objects
    assert _ids(api, t["admin"], kind=["depleted", "low_balance"]) == ["al_test_3", "al_test_1"]
    assert _ids(api, t["admin"], reseller_id=o["res_a"], limit=2) == ["al_test_5", "al_test_2"]
    assert _ids(api, t["reseller_a"], customer_id=o["cus_a"], kind="fraud_suspected") == [
        "al_test_2"
    ]
    body = api.ok("GET", "/v2/alerts", token=t["customer_a"])
    first = body["alerts"][-1]
    assert first["details"] == {"balance_micros": 1_499_999, "note": "alert 1"}
    assert first["reseller_id"] == o["res_a"]
    assert datetime.fromisoformat(first["created_at"]) == NOW + timedelta(seconds=1)


def test_outside_the_scope_answers_404_and_bad_kinds_422(world: tuple[Api, World]) -> None:
    api, w = world
    t, o = w.tokens, w.objects
    assert (
        api.call(
            "GET", "/v2/alerts", t["reseller_a"], params={"customer_id": o["cus_b"]}
        ).status_code
        == 404
    )
    assert (
        api.call(
            "GET", "/v2/alerts", t["customer_a"], params={"reseller_id": o["res_a"]}
        ).status_code
        == 404
    )
    assert (
        api.call(
            "GET", "/v2/alerts", t["reseller_b"], params={"reseller_id": o["res_a"]}
        ).status_code
        == 404
    )
    bad = api.call("GET", "/v2/alerts", t["admin"], params={"kind": "drop table"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert api.call("GET", "/v2/alerts", None).status_code == 401

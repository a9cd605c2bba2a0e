"""Online-ML reads and writes through a running api: fraud labels (stored, then published on
``streambill.fraud-labels.v1`` in the customer's partition), forecasts (with and without the
agent's row), fraud scores from ``billing.fraud.v1`` through the ClickHouse sink (replays
collapsed, newest first), suspected events by scope, GraphQL, and resellers' fraud threshold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from apiworld import Api, running_api
from pipeline import producer, send
from streambill.broker.testing import consumer_config
from streambill.control.models import CustomerForecast
from streambill.engine.balances import partition_for
from streambill.streams import topics

pytestmark = pytest.mark.integration

PARTITIONS = 4
PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]


@dataclass
class Setup:
    api: Api
    res_a: str
    res_b: str
    cus_a: str  # of res_a
    cus_a2: str  # of res_a, with scores
    cus_b: str  # of res_b
    cus_d: str  # direct
    tokens: dict[str, str]


def _key(api: Api, tenant: str, role: str) -> str:
    return str(api.ok("POST", "/v2/api-keys", {"tenant_id": tenant, "role": role})["key"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("ml-api")
    with running_api(tmp, "sqlite") as api:
        res_a = api.ok("POST", "/v2/resellers", {"name": "ML Partner A", "currency": "EUR"})["id"]
        res_b = api.ok("POST", "/v2/resellers", {"name": "ML Partner B", "currency": "EUR"})["id"]

        def customer(reseller: str | None, currency: str = "EUR") -> str:
            body: dict[str, Any] = {"name": "Praxis", "currency": currency, "prices": PRICE}
            if reseller:
                body["reseller_id"] = reseller
            return str(api.ok("POST", "/v2/customers", body)["id"])

        cus_a, cus_a2 = customer(res_a), customer(res_a)
        cus_b, cus_d = customer(res_b), customer(None)
        tokens = {
            "admin": api.stack.admin_key,
            "reseller_a": _key(api, res_a, "reseller"),
            "reseller_b": _key(api, res_b, "reseller"),
            "service_res_a": _key(api, res_a, "service"),
            "customer_a": _key(api, cus_a, "customer"),
            "service_a": _key(api, cus_a, "service"),
        }
        yield Setup(api, res_a, res_b, cus_a, cus_a2, cus_b, cus_d, tokens)


def _error(response: Any) -> str:
    return str(response.json()["error"]["code"])


# -- fraud labels -----------------------------------------------------------------------------


def _labels_on_topic(bootstrap: str, until: int, timeout_s: float) -> list[tuple[int, Any, Any]]:
    """(partition, key, value) of every label message, once ``until`` arrived."""
    consumer = Consumer(consumer_config(bootstrap, f"t-labels-{time.monotonic_ns()}"))
    meta = consumer.list_topics(topics.FRAUD_LABELS, timeout=10)
    parts = meta.topics[topics.FRAUD_LABELS].partitions
    consumer.assign([TopicPartition(topics.FRAUD_LABELS, p, 0) for p in parts])
    out: list[tuple[int, Any, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < until:
            for msg in consumer.consume(1000, 0.5):
                partition, key, value = msg.partition(), msg.key(), msg.value()
                if msg.error() is None and partition is not None and key and value:
                    out.append((partition, key.decode(), orjson.loads(value)))
        return out
    finally:
        consumer.close()


def test_a_label_is_stored_and_published_in_the_customers_partition(setup: Setup) -> None:
    api, cus = setup.api, setup.cus_a
    by_admin = api.call(
        "POST",
        f"/v2/customers/{cus}/fraud-labels",
        setup.tokens["admin"],
        {"fraud": True, "event_id": "call-1", "note": "account takeover, ticket 91"},
    )
    by_reseller = api.call(
        "POST", f"/v2/customers/{cus}/fraud-labels", setup.tokens["reseller_a"], {"fraud": False}
    )
    assert (by_admin.status_code, by_reseller.status_code) == (201, 201), by_admin.text
    first, second = by_admin.json(), by_reseller.json()
    assert first["id"].startswith("fl_") and first["customer_id"] == cus
    assert (first["fraud"], first["event_id"], first["note"]) == (
        True,
        "call-1",
        "account takeover, ticket 91",
    )
    assert first["created_by"] == "admin:admin"
    assert second["created_by"].startswith("reseller:key_") and second["event_id"] is None

    published = [m for m in _labels_on_topic(api.bootstrap, 2, 30) if m[1] == cus]
    assert len(published) == 2
    by_id = {value["label_id"]: (partition, value) for partition, _, value in published}
    partition, message = by_id[first["id"]]
    assert partition == partition_for(cus.encode(), PARTITIONS)
    assert message == {
        "label_id": first["id"],
        "customer_id": cus,
        "fraud": True,
        "event_id": "call-1",
        "source": "manual",
        "note": "account takeover, ticket 91",
        "created_at": message["created_at"],
    }
    created = datetime.fromisoformat(message["created_at"])
    assert created.tzinfo is not None
    assert created == datetime.fromisoformat(first["created_at"].replace("Z", "+00:00"))
    assert by_id[second["id"]][1]["fraud"] is False

    listed = api.call("GET", f"/v2/customers/{cus}/fraud-labels?limit=1", setup.tokens["admin"])
    page = listed.json()
    assert listed.status_code == 200 and len(page["items"]) == 1 and page["next_cursor"]
    rest = api.ok("GET", f"/v2/customers/{cus}/fraud-labels?cursor={page['next_cursor']}")
    assert {page["items"][0]["id"], *(i["id"] for i in rest["items"])} == set(by_id)
    audit = api.ok("GET", f"/v2/admin/audit?target={cus}")["items"]
    assert [a["action"] for a in audit].count("customer.fraud_label") == 2


def test_who_may_label_and_read_labels(setup: Setup) -> None:
    api, t = setup.api, setup.tokens
    path_a = f"/v2/customers/{setup.cus_a}/fraud-labels"
    for name in ("customer_a", "service_a"):  # they see the customer but may not label it
        for method, body in (("POST", {"fraud": True}), ("GET", None)):
            r = api.call(method, path_a, t[name], body)
            assert (r.status_code, _error(r)) == (403, "forbidden"), (name, method, r.text)
    for name in ("reseller_b", "customer_a", "service_a", "service_res_a"):
        other = setup.cus_a if name == "reseller_b" else setup.cus_b
        r = api.call("POST", f"/v2/customers/{other}/fraud-labels", t[name], {"fraud": True})
        assert (r.status_code, _error(r)) == (404, "not_found"), (name, r.text)
    # a service key bound to the owning reseller sees the customer, but acts for traffic
    r = api.call("POST", path_a, t["service_res_a"], {"fraud": True})
    assert (r.status_code, _error(r)) == (403, "forbidden")
    ghost = api.call("POST", "/v2/customers/cus_ghost/fraud-labels", t["admin"], {"fraud": True})
    assert (ghost.status_code, _error(ghost)) == (404, "not_found")
    direct_path = f"/v2/customers/{setup.cus_d}/fraud-labels"
    direct = api.call("POST", direct_path, t["reseller_a"], {"fraud": True})
    assert direct.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"fraud": "yes"},
        {"fraud": 1},
        {"fraud": True, "event_id": ""},
        {"fraud": True, "event_id": "e" * 129},
        {"fraud": True, "note": "n" * 501},
        {"fraud": True, "note": "bad\x00"},
        {"fraud": True, "color": "red"},
    ],
)
def test_an_invalid_label_is_422_and_stores_nothing(setup: Setup, body: dict[str, Any]) -> None:
    api = setup.api
    path = f"/v2/customers/{setup.cus_d}/fraud-labels"
    r = api.call("POST", path, setup.tokens["admin"], body)
    assert (r.status_code, _error(r)) == (422, "invalid_request"), r.text
    assert api.ok("GET", path)["items"] == []


def test_label_limits_are_inclusive(setup: Setup) -> None:
    body = {"fraud": True, "event_id": "e" * 128, "note": "n" * 500}
    r = setup.api.call(
        "POST", f"/v2/customers/{setup.cus_b}/fraud-labels", setup.tokens["reseller_b"], body
    )
    assert r.status_code == 201 and r.json()["event_id"] == "e" * 128


# -- forecasts --------------------------------------------------------------------------------


def test_a_customer_without_a_forecast_gets_zeros_and_nulls(setup: Setup) -> None:
    for name in ("admin", "reseller_a", "customer_a", "service_a"):
        r = setup.api.call("GET", f"/v2/customers/{setup.cus_a}/forecast", setup.tokens[name])
        assert r.status_code == 200, (name, r.text)
        assert r.json() == {
            "customer_id": setup.cus_a,
            "currency": "EUR",
            "daily_units": [0, 0, 0, 0, 0, 0, 0],
            "depletion_at": None,
            "recommended_topup": None,
            "recommended_topup_micros": None,
            "balance_micros": 0,
            "days_learned": 0,
            "updated_at": None,
        }


def _insert_forecast(api: Api, row: CustomerForecast) -> None:
    engine = create_engine(f"sqlite:///{api.stack.data_dir / 'control.db'}")
    try:
        with Session(engine) as session, session.begin():
            session.merge(row)
    finally:
        engine.dispose()


FORECAST_AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def forecasted(setup: Setup) -> Setup:
    """A forecast row for cus_b, written the way the forecast agent writes it."""
    units = ["12.3456", "0", "7.5", "1.0004", "1.0005", "3", "100.25"]
    _insert_forecast(
        setup.api,
        CustomerForecast(
            customer_id=setup.cus_b,
            currency="EUR",
            daily_units=units,
            balance_micros=4_150_000,
            depletion_at=FORECAST_AT + timedelta(hours=30),
            recommended_topup_micros=25_000_000,
            days_learned=34,
            updated_at=FORECAST_AT,
        ),
    )
    return setup


def test_the_forecast_row_is_answered_with_units_as_numbers_and_money_formatted(
    forecasted: Setup,
) -> None:
    setup, now = forecasted, FORECAST_AT
    r = setup.api.call("GET", f"/v2/customers/{setup.cus_b}/forecast", setup.tokens["reseller_b"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["daily_units"] == [12.346, 0, 7.5, 1.0, 1.0, 3, 100.25]
    assert all(type(u) in (int, float) for u in body["daily_units"])
    assert body["recommended_topup"] == "25.00" and body["recommended_topup_micros"] == 25_000_000
    assert body["balance_micros"] == 4_150_000 and body["days_learned"] == 34
    assert datetime.fromisoformat(body["depletion_at"].replace("Z", "+00:00")) == now + timedelta(
        hours=30
    )
    assert datetime.fromisoformat(body["updated_at"].replace("Z", "+00:00")) == now
    # outside the scope: 404, as for a customer that does not exist
    for name in ("reseller_a", "customer_a", "service_a"):
        other = setup.api.call("GET", f"/v2/customers/{setup.cus_b}/forecast", setup.tokens[name])
        assert (other.status_code, _error(other)) == (404, "not_found"), name
    ghost = setup.api.call("GET", "/v2/customers/cus_ghost/forecast", setup.tokens["admin"])
    assert ghost.status_code == 404


# -- fraud scores -----------------------------------------------------------------------------


def _score(n: int, customer: str, reseller: str | None, **overrides: Any) -> dict[str, Any]:
    occurred = datetime(2026, 11, 25, 10, tzinfo=UTC) + timedelta(minutes=n)
    message = {
        "score_id": f"fs_{n:020x}",
        "customer_id": customer,
        "reseller_id": reseller,
        "source": "usage",
        "event_id": f"call-{n}",
        "kind": "usage",
        "score": 0.5,
        "unsupervised": 0.5,
        "supervised": None,
        "threshold": 0.9,
        "suspected": False,
        "occurred_at": occurred.isoformat(),
        "scored_at": (occurred + timedelta(seconds=1)).isoformat(),
    }
    return message | overrides


@pytest.fixture(scope="module")
def scored(setup: Setup) -> Setup:
    """Scores of three customers on billing.fraud.v1, with a replay and a malformed one."""
    suspect = {"score": 0.9731, "unsupervised": 0.9731, "supervised": 0.8, "suspected": True}
    messages = [
        _score(1, setup.cus_a2, setup.res_a),
        _score(2, setup.cus_a2, setup.res_a, **suspect),
        _score(3, setup.cus_a2, setup.res_a, source="payment", kind="topup", score=0.25),
        # a replay of score 2 (the worker re-scored the event after a restart): one row
        _score(2, setup.cus_a2, setup.res_a, **suspect)
        | {"scored_at": "2026-11-25T11:00:00+00:00"},
        _score(4, setup.cus_b, setup.res_b, **suspect),
        _score(5, setup.cus_d, None, **suspect),
        _score(6, setup.cus_a2, setup.res_a, score=7),  # malformed: skipped by the sink
    ]
    p = producer(setup.api.bootstrap)
    for message in messages:
        send(p, topics.FRAUD, message, message["customer_id"])
    assert p.flush(10) == 0
    deadline = time.monotonic() + 30
    path = f"/v2/customers/{setup.cus_d}/fraud-scores"
    while time.monotonic() < deadline:  # the last customer's score arrived: a flush happened
        if setup.api.ok("GET", path)["items"]:
            break
        time.sleep(0.3)
    return setup


def test_a_customers_scores_newest_first_each_once(scored: Setup) -> None:
    r = scored.api.call(
        "GET", f"/v2/customers/{scored.cus_a2}/fraud-scores", scored.tokens["reseller_a"]
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["score_id"] for i in items] == [f"fs_{n:020x}" for n in (3, 2, 1)]
    assert items[0]["source"] == "payment" and items[0]["kind"] == "topup"
    assert items[1]["score"] == 0.9731 and items[1]["suspected"] is True
    assert items[1]["supervised"] == 0.8 and items[2]["supervised"] is None
    assert items[1]["threshold"] == 0.9 and items[1]["reseller_id"] == scored.res_a
    limited = scored.api.ok("GET", f"/v2/customers/{scored.cus_a2}/fraud-scores?limit=1")
    assert [i["score_id"] for i in limited["items"]] == [f"fs_{3:020x}"]


def test_scores_are_for_the_admin_and_the_owning_reseller_only(scored: Setup) -> None:
    api, t = scored.api, scored.tokens
    mine = f"/v2/customers/{scored.cus_a}/fraud-scores"
    for name in ("customer_a", "service_a"):
        r = api.call("GET", mine, t[name])
        assert (r.status_code, _error(r)) == (403, "forbidden"), name
    r = api.call("GET", f"/v2/customers/{scored.cus_a2}/fraud-scores", t["reseller_b"])
    assert r.status_code == 404
    assert api.call("GET", "/v2/customers/cus_ghost/fraud-scores", t["admin"]).status_code == 404


def test_suspected_events_by_scope(scored: Setup) -> None:
    api, t = scored.api, scored.tokens

    def ids(token: str, query: str = "") -> list[str]:
        r = api.call("GET", f"/v2/fraud/suspected{query}", token)
        assert r.status_code == 200, r.text
        return [i["score_id"] for i in r.json()["items"]]

    everyone = [f"fs_{n:020x}" for n in (5, 4, 2)]
    assert ids(t["admin"]) == everyone
    assert ids(t["admin"], f"?reseller_id={scored.res_b}") == [f"fs_{4:020x}"]
    assert ids(t["reseller_a"]) == [f"fs_{2:020x}"]
    assert ids(t["reseller_a"], f"?reseller_id={scored.res_a}") == [f"fs_{2:020x}"]
    assert ids(t["admin"], "?limit=1") == everyone[:1]
    foreign = api.call("GET", f"/v2/fraud/suspected?reseller_id={scored.res_b}", t["reseller_a"])
    assert (foreign.status_code, _error(foreign)) == (404, "not_found")
    ghost = api.call("GET", "/v2/fraud/suspected?reseller_id=res_ghost", t["admin"])
    assert ghost.status_code == 404
    for name in ("customer_a", "service_a", "service_res_a"):
        r = api.call("GET", "/v2/fraud/suspected", t[name])
        assert (r.status_code, _error(r)) == (403, "forbidden"), name
    assert api.call("GET", "/v2/fraud/suspected", None).status_code == 401
    too_many = api.call("GET", "/v2/fraud/suspected?limit=1001", t["admin"])
    assert (too_many.status_code, _error(too_many)) == (422, "invalid_request")


def _graphql(api: Api, token: str, query: str, **variables: Any) -> Any:
    r = api.call("POST", "/graphql", token, {"query": query, "variables": variables})
    assert r.status_code == 200, r.text
    return r.json()


def test_graphql_forecast_and_scores(scored: Setup, forecasted: Setup) -> None:
    api, t = scored.api, scored.tokens
    forecast = "query($id: String!) { forecast(customerId: $id) { dailyUnits recommendedTopup"
    forecast += " recommendedTopupMicros daysLearned depletionAt } }"
    found = _graphql(api, t["reseller_b"], forecast, id=scored.cus_b)["data"]["forecast"]
    assert found["dailyUnits"] == [12.346, 0, 7.5, 1.0, 1.0, 3, 100.25]
    assert found["recommendedTopup"] == "25.00" and found["recommendedTopupMicros"] == 25_000_000
    empty = _graphql(api, t["customer_a"], forecast, id=scored.cus_a)["data"]["forecast"]
    assert empty["dailyUnits"] == [0] * 7 and empty["depletionAt"] is None
    hidden = _graphql(api, t["customer_a"], forecast, id=scored.cus_b)
    assert hidden["errors"][0]["extensions"]["code"] == "NOT_FOUND"

    scores = "query($id: String!) { fraudScores(customerId: $id, limit: 2) { scoreId score"
    scores += " suspected } }"
    listed = _graphql(api, t["admin"], scores, id=scored.cus_a2)["data"]["fraudScores"]
    assert listed == [
        {"scoreId": f"fs_{3:020x}", "score": 0.25, "suspected": False},
        {"scoreId": f"fs_{2:020x}", "score": 0.9731, "suspected": True},
    ]
    denied = _graphql(api, t["customer_a"], scores, id=scored.cus_a)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    foreign = _graphql(api, t["reseller_b"], scores, id=scored.cus_a2)
    assert foreign["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# -- resellers' fraud threshold ---------------------------------------------------------------


def test_a_resellers_fraud_threshold(setup: Setup) -> None:
    api, t = setup.api, setup.tokens
    body = {"name": "Strict Partner", "currency": "EUR", "fraud_threshold": "0.85"}
    created = api.ok("POST", "/v2/resellers", body)
    rid = created["id"]
    assert created["fraud_threshold"] == "0.85"
    assert api.ok("GET", f"/v2/resellers/{setup.res_a}")["fraud_threshold"] is None
    assert api.ok("GET", f"/v2/customers/{setup.cus_a}")["fraud_threshold"] is None

    path_a = f"/v2/resellers/{setup.res_a}"
    own = api.call("PATCH", path_a, t["reseller_a"], {"fraud_threshold": "0.7500"})
    assert own.status_code == 200 and own.json()["fraud_threshold"] == "0.7500"
    assert api.ok("GET", path_a, token=t["reseller_a"])["fraud_threshold"] == "0.7500"
    for value in ("1", "0", "1.0000", "0.9999"):
        r = api.call("PATCH", path_a, t["admin"], {"fraud_threshold": value})
        assert r.status_code == 200 and r.json()["fraud_threshold"] == value
    reset = api.call("PATCH", path_a, t["reseller_a"], {"fraud_threshold": None})
    assert reset.status_code == 200 and reset.json()["fraud_threshold"] is None

    for bad in ("1.5", "0.12345", "-0.1", "abc", "", ".5", 0.5, 1, "1.0001"):
        r = api.call("PATCH", path_a, t["admin"], {"fraud_threshold": bad})
        assert (r.status_code, _error(r)) == (422, "invalid_request"), (bad, r.text)
        r = api.call("POST", "/v2/resellers", t["admin"], body | {"fraud_threshold": bad})
        assert (r.status_code, _error(r)) == (422, "invalid_request"), (bad, r.text)
    assert api.ok("GET", path_a)["fraud_threshold"] is None

    service = api.call("PATCH", path_a, t["service_res_a"], {"fraud_threshold": "0.5"})
    assert (service.status_code, _error(service)) == (403, "forbidden")
    other = api.call("PATCH", f"/v2/resellers/{rid}", t["reseller_a"], {"fraud_threshold": "0.5"})
    assert other.status_code == 404
    customer = api.call("PATCH", path_a, t["customer_a"], {"fraud_threshold": "0.5"})
    assert customer.status_code == 404
    tenant = "query($id: String!) { tenant(id: $id) { fraudThreshold } }"
    assert _graphql(api, t["admin"], tenant, id=rid)["data"]["tenant"]["fraudThreshold"] == "0.85"
    audit = api.ok("GET", f"/v2/admin/audit?target={setup.res_a}")["items"]
    assert any(a["details"].get("fraud_threshold") == "0.7500" for a in audit)

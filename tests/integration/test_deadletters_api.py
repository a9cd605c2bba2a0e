"""Dead letters through a running api and worker on the embedded broker: listing (newest
first, filters, cursors) and replaying. The typical repair: usage for a meter without a
price, or for a customer that does not exist yet, is dead-lettered by the worker; the admin
fixes the account and replays the letter; the ledger gets the entry. A second replay
answers 409 unless forced, and a forced one changes nothing (the event_id deduplicates)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import pytest

from apiworld import Api, running_api
from pipeline import producer, send
from streambill.streams import topics

pytestmark = pytest.mark.integration

T = TypeVar("T")
PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]
PRICES_FIXED = [*PRICE, {"meter": "sms", "unit_price": "0.02"}]


def _until(what: str, probe: Callable[[], T | None], timeout_s: float = 40.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("deadletters")
    with running_api(tmp, "sqlite") as running:
        running.stack.start_worker()
        yield running


def _letters(api: Api, query: str = "") -> list[dict[str, Any]]:
    return list(api.ok("GET", f"/v2/admin/deadletters?limit=1000&{query}")["deadletters"])


def _letter_of(api: Api, event_id: str, code: str) -> dict[str, Any] | None:
    for letter in _letters(api, f"error_code={code}"):
        if orjson.loads(letter["value"]).get("event_id") == event_id:
            return letter
    return None


def _entries(api: Api, customer: str, event_id: str) -> list[dict[str, Any]]:
    ledger = api.ok("GET", f"/v2/customers/{customer}/ledger?limit=1000")["entries"]
    return [e for e in ledger if e["source_event_id"] == event_id]


def _applied(api: Api, customer: str, meter: str) -> None:
    """Send probe events until one is applied: the worker then holds the account as
    changed (every probe before that one was dead-lettered, and stays so)."""

    def probe() -> bool:
        event_id = f"probe-{secrets.token_hex(4)}"
        body = {"event_id": event_id, "customer_id": customer, "meter": meter, "quantity": "1"}
        api.ok("POST", "/v2/usage", body)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if _entries(api, customer, event_id):
                return True
            time.sleep(0.2)
        return False

    _until(f"the worker to apply {meter} for {customer}", probe, timeout_s=40)


def _replay(api: Api, letter_id: str, query: str = "") -> Any:
    return api.call("POST", f"/v2/admin/deadletters/{letter_id}/replay{query}", api.stack.admin_key)


def test_unknown_meter_fixed_and_replayed(api: Api) -> None:
    body = {"name": "Praxis", "currency": "EUR", "prices": PRICE}
    cus = api.ok("POST", "/v2/customers", body)["id"]
    event_id = f"sms-{secrets.token_hex(4)}"
    event = {"event_id": event_id, "customer_id": cus, "meter": "sms", "quantity": "12"}
    assert api.ok("POST", "/v2/usage", event)["accepted"] == 1
    letter = _until("the dead letter", lambda: _letter_of(api, event_id, "unknown_meter"))
    assert letter["topic"] == topics.USAGE and letter["key"] == cus
    assert letter["status"] == "open" and letter["replayed_at"] is None
    assert letter["replayed_by"] is None and letter["replays"] == 0 and letter["replayable"]
    assert quote(letter["id"], safe="") == letter["id"]  # URL-safe as it is
    assert orjson.loads(letter["value"])["quantity"] == "12"
    assert letter["id"] not in {x["id"] for x in _letters(api, "status=replayed")}
    assert letter["id"] in {x["id"] for x in _letters(api, "status=open")}

    api.ok("PATCH", f"/v2/customers/{cus}", {"prices": PRICES_FIXED})
    _applied(api, cus, "sms")
    replayed = _replay(api, letter["id"])
    assert replayed.status_code == 200, replayed.text
    body = replayed.json()
    changed = ("status", "replayed_at", "replayed_by", "replays")
    assert {k: v for k, v in body.items() if k not in changed} == {
        k: v for k, v in letter.items() if k not in changed
    }
    assert (body["status"], body["replayed_by"], body["replays"]) == (
        "replayed",
        "admin:-:admin",
        1,
    )
    assert datetime.fromisoformat(body["replayed_at"]) > datetime.now(UTC) - timedelta(minutes=1)

    entries = _until("the replayed entry", lambda: _entries(api, cus, event_id))
    assert [(e["kind"], e["meter"], e["quantity"], e["amount_micros"]) for e in entries] == [
        ("usage", "sms", "12", -240_000)
    ]
    again = _replay(api, letter["id"])
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_replayed")

    forced = _replay(api, letter["id"], "?force=true")
    assert forced.status_code == 200 and forced.json()["replays"] == 2
    # A later event of the customer is applied after the forced replay (one partition, in
    # order): by then the replay was seen, and dropped as a duplicate.
    _applied(api, cus, "sms")
    assert len(_entries(api, cus, event_id)) == 1

    listed = {x["id"]: x for x in _letters(api, "status=replayed")}
    assert listed[letter["id"]]["replays"] == 2
    assert letter["id"] not in {x["id"] for x in _letters(api, "status=open")}
    audit = api.ok("GET", f"/v2/admin/audit?target={letter['id']}")["items"]
    assert [(a["action"], a["details"]["forced"]) for a in audit] == [
        ("deadletter.replay", True),
        ("deadletter.replay", False),
    ]


def test_unknown_customer_created_and_replayed(api: Api) -> None:
    cus = f"cus_late_{secrets.token_hex(4)}"
    event_id = f"late-{secrets.token_hex(4)}"
    event = {
        "event_id": event_id,
        "customer_id": cus,
        "meter": "call_minutes",
        "quantity": "2",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    p = producer(api.bootstrap)
    send(p, topics.USAGE, event, cus)
    p.flush(10)
    letter = _until(
        "the unknown customer's letter", lambda: _letter_of(api, event_id, "unknown_customer")
    )
    assert letter["key"] == cus and orjson.loads(letter["value"]) == event

    body = {"id": cus, "name": "Spät", "currency": "EUR", "prices": PRICE}
    api.ok("POST", "/v2/customers", body)
    _applied(api, cus, "call_minutes")
    assert _replay(api, letter["id"]).status_code == 200
    entries = _until("the replayed entry", lambda: _entries(api, cus, event_id))
    assert [(e["amount_micros"], e["quantity"]) for e in entries] == [(-300_000, "2")]


def _synthetic(topic: str, offset: int, failed_at: datetime, code: str) -> dict[str, Any]:
    return {
        "topic": topic,
        "partition": 1,
        "offset": offset,
        "key": None,
        "value": "not json",
        "error_code": code,
        "reason": "synthetic",
        "failed_at": failed_at.isoformat(),
    }


def test_pages_filters_and_what_cannot_be_replayed(api: Api) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    code = f"synthetic_{secrets.token_hex(3)}"
    p = producer(api.bootstrap)
    for n in range(5):
        letter = _synthetic(topics.ACCOUNTS, 1_000 + n, base + timedelta(seconds=n), code)
        send(p, topics.DEADLETTER, letter, f"k{n}")
        send(p, topics.DEADLETTER, letter, f"k{n}")  # a re-emitted letter: listed once
    send(p, topics.DEADLETTER, _synthetic(topics.USAGE, 7, base, code), "k")
    p.flush(10)
    _until("the synthetic letters", lambda: len(_letters(api, f"error_code={code}")) == 6)

    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(10):
        page = api.ok("GET", f"/v2/admin/deadletters?limit=2&error_code={code}{cursor}")
        seen += page["deadletters"]
        if page["next"] is None:
            break
        assert len(page["deadletters"]) == 2
        cursor = f"&cursor={page['next']}"
    times = [x["failed_at"] for x in seen]
    assert len(seen) == 6 and len({x["id"] for x in seen}) == 6
    assert times == sorted(times, reverse=True)
    # equal times: by topic, partition, offset, descending too
    assert [x["offset"] for x in seen] == [1004, 1003, 1002, 1001, 7, 1000]

    accounts = _letters(api, f"error_code={code}&topic={topics.ACCOUNTS}")
    assert {x["offset"] for x in accounts} == {1000, 1001, 1002, 1003, 1004}
    assert not any(x["replayable"] for x in accounts)
    refused = _replay(api, accounts[0]["id"])
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "not_replayable")
    keyless = next(x for x in seen if x["topic"] == topics.USAGE)
    refused = _replay(api, keyless["id"])  # no key, and no customer_id in a non-JSON value
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "not_replayable")
    assert _letters(api, f"error_code={code}&status=replayed") == []
    assert len(_letters(api, f"error_code={code}&status=open")) == 6

    for ghost in ("ghost", "dl_bm9wZQ", accounts[0]["id"] + "A", "dl_" + "A" * 600):
        r = _replay(api, ghost)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), ghost
    bad = api.call("GET", "/v2/admin/deadletters?cursor=bm9wZQ", api.stack.admin_key)
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_request")


def test_only_the_admin(api: Api) -> None:
    reseller = api.ok("POST", "/v2/resellers", {"name": "R", "currency": "EUR"})["id"]
    key = api.ok("POST", "/v2/api-keys", {"tenant_id": reseller, "role": "reseller"})["key"]
    assert api.call("GET", "/v2/admin/deadletters", key).status_code == 403
    assert api.call("POST", "/v2/admin/deadletters/dl_x/replay", key).status_code == 403
    assert api.call("GET", "/v2/admin/deadletters", None).status_code == 401

"""The live stream through the whole stack: a customer's key opens ``/v2/stream`` on the api,
usage posted over HTTP is rated by a worker, and the socket gets each balance change of its own
customer and nothing of anyone else's; revoking the key closes the socket at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from apiworld import Api, running_api

pytestmark = pytest.mark.integration

PRICE = [{"meter": "call_minutes", "unit_price": "0.15"}]
EVENTS = 40


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("stream-api")
    with running_api(tmp, "sqlite") as running:
        running.stack.start_worker()
        yield running


async def _open(api: Api, token: str) -> ClientConnection:
    url = api.base_url.replace("http://", "ws://") + "/v2/stream"
    socket = await connect(url)
    await socket.send(orjson.dumps({"token": token}).decode())
    welcome = orjson.loads(await socket.recv())
    assert welcome["type"] == "welcome", welcome
    await socket.send(orjson.dumps({"subscribe": ["balances"]}).decode())
    assert orjson.loads(await socket.recv())["type"] == "subscribed"
    return socket


async def _balances(socket: ClientConnection, until_seq: int, timeout_s: float) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while not got or got[-1]["seq"] < until_seq:
            message = orjson.loads(await socket.recv())
            if message["type"] == "balance":
                got.append(message)
    return got


async def test_a_customer_socket_follows_its_own_balance_only(api: Api) -> None:
    reseller = api.ok("POST", "/v2/resellers", {"name": "Live Partner", "currency": "EUR"})["id"]
    body = {"currency": "EUR", "prices": PRICE, "reseller_id": reseller}
    mine = api.ok("POST", "/v2/customers", {"name": "Live One", **body})["id"]
    other = api.ok("POST", "/v2/customers", {"name": "Live Two", **body})["id"]
    customer_key = api.ok("POST", "/v2/api-keys", {"tenant_id": mine, "role": "customer"})
    reseller_key = api.ok("POST", "/v2/api-keys", {"tenant_id": reseller, "role": "reseller"})
    service_key = api.ok("POST", "/v2/api-keys", {"tenant_id": reseller, "role": "service"})["key"]
    own = await _open(api, customer_key["key"])
    partner = await _open(api, reseller_key["key"])
    for cid in (mine, other):
        adjustment = {"amount": "10.00", "reason": "welcome credit"}
        api.ok("POST", f"/v2/customers/{cid}/adjustments", adjustment)
    events = [
        {"event_id": f"live-{n}", "customer_id": cid, "meter": "call_minutes", "quantity": "1"}
        for n in range(EVENTS)
        for cid in (mine, other)
    ]
    answer = api.call("POST", "/v2/usage", service_key, {"events": events})
    assert answer.status_code == 202 and answer.json()["accepted"] == 2 * EVENTS
    got = await _balances(own, EVENTS + 1, timeout_s=60)
    assert {m["customer_id"] for m in got} == {mine}
    assert [m["seq"] for m in got] == list(range(1, EVENTS + 2))
    assert got[-1]["balance_micros"] == 10_000_000 - EVENTS * 150_000
    assert got[-1]["balance"] == "4.00"
    seen: dict[str, int] = {}
    async with asyncio.timeout(60):
        while seen.get(mine, 0) < EVENTS + 1 or seen.get(other, 0) < EVENTS + 1:
            message = orjson.loads(await partner.recv())
            if message["type"] == "balance":
                seen[message["customer_id"]] = message["seq"]
    assert set(seen) == {mine, other}
    # Revoking the key closes its socket (in this api at once: no wait for revalidation).
    api.ok("DELETE", f"/v2/api-keys/{customer_key['id']}")
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                await own.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    await partner.close()


async def test_a_reseller_socket_sees_its_commission_move_and_no_one_elses(api: Api) -> None:
    """The ``commissions`` channel end to end: usage -> ledger -> commissions agent -> topic ->
    live feed -> the reseller's socket, within seconds; another reseller sees none of it."""
    mine = api.ok("POST", "/v2/resellers", {"name": "Ticker Partner", "currency": "EUR"})["id"]
    other = api.ok("POST", "/v2/resellers", {"name": "Other Partner", "currency": "EUR"})["id"]
    body = {"currency": "EUR", "prices": PRICE, "reseller_id": mine}
    customer = api.ok("POST", "/v2/customers", {"name": "Ticker Customer", **body})["id"]
    sockets = []
    for reseller in (mine, other):
        key = api.ok("POST", "/v2/api-keys", {"tenant_id": reseller, "role": "reseller"})["key"]
        socket = await _open(api, key)
        await socket.send(orjson.dumps({"subscribe": ["commissions"]}).decode())
        assert orjson.loads(await socket.recv())["type"] == "subscribed"
        sockets.append(socket)
    events = [
        {"event_id": f"tick-{n}", "customer_id": customer, "meter": "call_minutes", "quantity": "2"}
        for n in range(3)
    ]
    answer = api.call("POST", "/v2/usage", api.stack.admin_key, {"events": events})
    assert answer.status_code == 202
    base = 3 * 2 * int(Decimal(PRICE[0]["unit_price"]) * 1_000_000)
    seen: list[Any] = []
    async with asyncio.timeout(30):
        while sum(m["base_delta_micros"] for m in seen) < base:
            message = orjson.loads(await sockets[0].recv())
            if message["type"] == "commission":
                seen.append(message)
    assert {m["reseller_id"] for m in seen} == {mine}
    last = max(seen, key=lambda m: m["position"])
    assert last["base_micros"] == base and last["month_commission_micros"] == base // 4
    with pytest.raises(TimeoutError):  # the other reseller's socket stays silent
        async with asyncio.timeout(2):
            while True:
                message = orjson.loads(await sockets[1].recv())
                assert message["type"] != "commission", message
    for socket in sockets:
        await socket.close()

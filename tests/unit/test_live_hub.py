"""The live hub without sockets: who gets what, coalescing, bounds, and slow sockets.

Subscribers are drained with ``take()`` (synchronous) or through :func:`pump` into fake
sockets; nothing here waits on a clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from streambill.api.live import (
    LiveFeed,
    LiveHub,
    Subscriber,
    SubscriberClosed,
    balance_message,
    pump,
)
from streambill.control.principal import Principal
from streambill.errors import InvalidEvent

ADMIN = Principal("admin", None, None, "k-admin")
RESELLER_A = Principal("reseller", "res_a", "reseller", "k-res-a")
RESELLER_B = Principal("reseller", "res_b", "reseller", "k-res-b")
CUSTOMER_1 = Principal("customer", "cus_1", "customer", "k-cus-1")
SERVICE_CUSTOMER_2 = Principal("service", "cus_2", "customer", "k-svc-cus-2")
SERVICE_RESELLER_B = Principal("service", "res_b", "reseller", "k-svc-res-b")
UNBOUND_SERVICE = Principal("service", None, None, "k-svc-none")

# customer -> its reseller (cus_9 is a direct customer)
OWNERS: dict[str, str | None] = {
    "cus_1": "res_a",
    "cus_2": "res_a",
    "cus_3": "res_b",
    "cus_9": None,
}
EXPECTED_CUSTOMERS = {
    ADMIN: {"cus_1", "cus_2", "cus_3", "cus_9"},
    RESELLER_A: {"cus_1", "cus_2"},
    RESELLER_B: {"cus_3"},
    CUSTOMER_1: {"cus_1"},
    SERVICE_CUSTOMER_2: {"cus_2"},
    SERVICE_RESELLER_B: {"cus_3"},
    UNBOUND_SERVICE: set(),
}


def entry(customer_id: str, seq: int, balance_micros: int | None = None) -> dict[str, Any]:
    return {
        "entry_id": f"{customer_id}:{seq}",
        "source_event_id": f"ev-{seq}",
        "source_topic": "billing.usage.v1",
        "customer_id": customer_id,
        "reseller_id": OWNERS.get(customer_id),
        "kind": "usage",
        "meter": "call_minutes",
        "quantity": "1",
        "amount_micros": -150_000,
        "balance_micros": -150_000 * seq if balance_micros is None else balance_micros,
        "currency": "EUR",
        "seq": seq,
        "occurred_at": "2026-11-25T10:00:00+00:00",
        "applied_at": "2026-11-25T10:00:00.001+00:00",
    }


def alert(customer_id: str, number: int) -> dict[str, Any]:
    return {
        "alert_id": f"{customer_id}:a{number}",
        "customer_id": customer_id,
        "reseller_id": OWNERS.get(customer_id),
        "kind": "low_balance",
        "details": {"balance_micros": 1},
        "created_at": "2026-11-25T10:00:00+00:00",
    }


def commission(reseller_id: str, number: int) -> dict[str, Any]:
    return {"commission_id": f"{reseller_id}:c{number}", "reseller_id": reseller_id}


def messages(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [orjson.loads(text) for _, text in subscriber.take(100_000)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def subscribed(hub: LiveHub, principal: Principal, *channels: str, **kw: Any) -> Subscriber:
    subscriber = hub.subscribe(principal, **kw)
    subscriber.subscribe(channels or ("balances", "alerts", "commissions"))
    return subscriber


# --- scope --------------------------------------------------------------------------------


def test_each_principal_gets_exactly_its_customers_balances_and_alerts() -> None:
    hub = LiveHub()
    subscribers = {p: subscribed(hub, p) for p in EXPECTED_CUSTOMERS}
    for customer_id in OWNERS:
        hub.publish_ledger(entry(customer_id, 1))
        hub.publish_alert(alert(customer_id, 1))
    for principal, subscriber in subscribers.items():
        got = messages(subscriber)
        balances = {m["customer_id"] for m in got if m["type"] == "balance"}
        alerts = {m["customer_id"] for m in got if m["type"] == "alert"}
        assert balances == EXPECTED_CUSTOMERS[principal], principal.label()
        assert alerts == EXPECTED_CUSTOMERS[principal], principal.label()
        assert len(got) == 2 * len(EXPECTED_CUSTOMERS[principal])


def test_fraud_alerts_reach_the_admin_and_the_reseller_never_the_suspect() -> None:
    hub = LiveHub()
    subscribers = {p: subscribed(hub, p, "alerts") for p in EXPECTED_CUSTOMERS}
    for customer_id in OWNERS:
        hub.publish_alert({**alert(customer_id, 1), "kind": "fraud_suspected"})
        hub.publish_alert({**alert(customer_id, 2), "kind": "predicted_depletion"})
    expected_fraud = {
        ADMIN: {"cus_1", "cus_2", "cus_3", "cus_9"},
        RESELLER_A: {"cus_1", "cus_2"},
        RESELLER_B: {"cus_3"},
    }
    for principal, subscriber in subscribers.items():
        got = messages(subscriber)
        fraud = {m["customer_id"] for m in got if m["kind"] == "fraud_suspected"}
        depletion = {m["customer_id"] for m in got if m["kind"] == "predicted_depletion"}
        assert fraud == expected_fraud.get(principal, set()), principal.label()
        assert depletion == EXPECTED_CUSTOMERS[principal], principal.label()


def test_commissions_reach_the_admin_and_their_reseller_only() -> None:
    hub = LiveHub()
    subscribers = {p: subscribed(hub, p) for p in EXPECTED_CUSTOMERS}
    hub.publish_commission(commission("res_a", 1))
    hub.publish_commission(commission("res_b", 2))
    expected = {
        ADMIN: {"res_a", "res_b"},
        RESELLER_A: {"res_a"},
        RESELLER_B: {"res_b"},
        # A service key bound to res_b posts its traffic; its money is not its business
        # (REST and GraphQL answer 404 there too).
    }
    for principal, subscriber in subscribers.items():
        got = messages(subscriber)
        assert all(m["type"] == "commission" for m in got)
        assert {m["reseller_id"] for m in got} == expected.get(principal, set()), principal


def test_channels_select_what_a_socket_gets() -> None:
    hub = LiveHub()
    alerts_only = subscribed(hub, ADMIN, "alerts")
    nothing_yet = hub.subscribe(ADMIN)
    hub.publish_ledger(entry("cus_1", 1))
    hub.publish_alert(alert("cus_1", 1))
    assert [m["type"] for m in messages(alerts_only)] == ["alert"]
    assert messages(nothing_yet) == []

    alerts_only.subscribe(["balances"])
    hub.publish_ledger(entry("cus_1", 2))
    alerts_only.unsubscribe(["balances"])  # what was pending for the channel goes too
    hub.publish_ledger(entry("cus_1", 3))
    assert messages(alerts_only) == []


def test_balance_message_carries_the_contract_fields_and_a_decimal_string() -> None:
    hub = LiveHub()
    subscriber = subscribed(hub, CUSTOMER_1, "balances")
    hub.publish_ledger(entry("cus_1", 2, balance_micros=19_775_000))
    [message] = messages(subscriber)
    assert message == {
        "type": "balance",
        "customer_id": "cus_1",
        "reseller_id": "res_a",
        "currency": "EUR",
        "balance_micros": 19_775_000,
        "balance": "19.775",
        "seq": 2,
        "applied_at": "2026-11-25T10:00:00.001+00:00",
        "entry_id": "cus_1:2",
        "kind": "usage",
        "amount_micros": -150_000,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"seq": "2"},
        {"balance_micros": 1.5},
        {"balance_micros": True},
        {"customer_id": None},
        {"reseller_id": 7},
        {"currency": None},
    ],
)
def test_a_malformed_entry_is_refused_before_it_reaches_anyone(change: dict[str, Any]) -> None:
    hub = LiveHub()
    subscriber = subscribed(hub, ADMIN)
    with pytest.raises(InvalidEvent):
        hub.publish_ledger({**entry("cus_1", 2), **change})
    with pytest.raises(InvalidEvent):
        balance_message({**entry("cus_1", 2), **change})
    assert messages(subscriber) == []


def test_malformed_alerts_and_commissions_are_refused() -> None:
    hub = LiveHub()
    with pytest.raises(InvalidEvent):
        hub.publish_alert({"alert_id": "a", "customer_id": 1})
    with pytest.raises(InvalidEvent):
        hub.publish_commission({"commission_id": "c"})


class CountingPrincipal(Principal):
    """Counts scope checks, to show which subscribers a publish looked at."""

    checks = 0

    def sees_customer(self, customer_id: str, reseller_id: str | None) -> bool:
        type(self).checks += 1
        return super().sees_customer(customer_id, reseller_id)


def test_publishing_looks_only_at_the_subscribers_indexed_for_the_customer() -> None:
    hub = LiveHub()
    for number in range(500):  # many other tenants' sockets
        subscribed(hub, CountingPrincipal("customer", f"cus_x{number}", "customer", f"kc{number}"))
        subscribed(hub, CountingPrincipal("reseller", f"res_x{number}", "reseller", f"kr{number}"))
    mine = subscribed(hub, CountingPrincipal("customer", "cus_1", "customer", "k-mine"))
    CountingPrincipal.checks = 0
    assert hub.publish_ledger(entry("cus_1", 1)) == 1
    assert hub.publish_alert(alert("cus_1", 1)) == 1
    assert CountingPrincipal.checks == 2  # the one socket of cus_1, once per publish
    assert [m["type"] for m in messages(mine)] == ["alert", "balance"]


# --- coalescing ---------------------------------------------------------------------------


def test_a_socket_that_keeps_up_gets_every_entry_in_order() -> None:
    hub = LiveHub(coalesce_after=4)
    subscriber = subscribed(hub, RESELLER_A, "balances")
    received: list[int] = []
    for seq in range(1, 201):
        hub.publish_ledger(entry("cus_1", seq))
        if seq % 3 == 0:  # bursts of three stay under the coalescing threshold
            received.extend(m["seq"] for m in messages(subscriber))
    received.extend(m["seq"] for m in messages(subscriber))
    assert received == list(range(1, 201))


def test_a_slow_socket_gets_the_latest_balance_of_each_customer() -> None:
    hub = LiveHub(coalesce_after=4)
    slow = subscribed(hub, ADMIN, "balances")
    coalesced_before = metric("streambill_live_messages_coalesced_total")
    for seq in range(1, 51):
        for customer_id in ("cus_1", "cus_2", "cus_3"):
            hub.publish_ledger(entry(customer_id, seq))
    got = messages(slow)
    by_customer: dict[str, list[int]] = defaultdict(list)
    for message in got:
        by_customer[message["customer_id"]].append(message["seq"])
    for customer_id, seqs in by_customer.items():
        assert seqs == sorted(set(seqs)), customer_id  # in order, no repeats
        assert seqs[-1] == 50, customer_id  # latest wins
    assert set(by_customer) == {"cus_1", "cus_2", "cus_3"}
    assert len(got) <= 4 + 3  # the threshold, then one per customer
    coalesced = metric("streambill_live_messages_coalesced_total") - coalesced_before
    assert coalesced == 150 - len(got)

    # Caught up again: every entry once more.
    for seq in range(51, 54):
        hub.publish_ledger(entry("cus_1", seq))
    assert [m["seq"] for m in messages(slow)] == [51, 52, 53]


@pytest.mark.parametrize(("coalesce_after", "expected"), [(10, [1, 5]), (1, [5])])
def test_an_older_or_repeated_entry_never_replaces_a_newer_pending_one(
    coalesce_after: int, expected: list[int]
) -> None:
    hub = LiveHub(coalesce_after=coalesce_after)
    subscriber = subscribed(hub, CUSTOMER_1, "balances")
    hub.publish_ledger(entry("cus_1", 1))
    hub.publish_ledger(entry("cus_1", 5))
    hub.publish_ledger(entry("cus_1", 3))  # a replay arriving late
    hub.publish_ledger(entry("cus_1", 5))  # a replay of the pending one
    assert [m["seq"] for m in messages(subscriber)] == expected


# --- bounds -------------------------------------------------------------------------------


def test_alerts_beyond_the_bound_drop_the_oldest_and_say_so() -> None:
    hub = LiveHub(max_events_buffered=3)
    subscriber = subscribed(hub, ADMIN, "alerts")
    dropped_before = metric("streambill_live_messages_dropped_total", channel="alerts")
    for number in range(10):
        hub.publish_alert(alert("cus_1", number))
    got = messages(subscriber)
    assert got[0] == {"type": "dropped", "channel": "alerts", "count": 7}
    assert [m["alert_id"] for m in got[1:]] == ["cus_1:a7", "cus_1:a8", "cus_1:a9"]
    assert metric("streambill_live_messages_dropped_total", channel="alerts") - dropped_before == 7
    hub.publish_alert(alert("cus_1", 10))  # the count starts again after the notice
    assert [m["type"] for m in messages(subscriber)] == ["alert"]


def test_commissions_are_bounded_on_their_own() -> None:
    hub = LiveHub(max_events_buffered=2)
    subscriber = subscribed(hub, ADMIN)
    for number in range(5):
        hub.publish_commission(commission("res_a", number))
    hub.publish_alert(alert("cus_1", 0))
    got = messages(subscriber)
    assert got[0]["type"] == "alert"  # alerts were not dropped for commissions
    assert got[1] == {"type": "dropped", "channel": "commissions", "count": 3}
    assert [m["commission_id"] for m in got[2:]] == ["res_a:c3", "res_a:c4"]


def test_too_many_pending_customers_close_the_socket_with_1013() -> None:
    hub = LiveHub(coalesce_after=1)
    subscriber = subscribed(hub, ADMIN, "balances", max_pending_customers=3)
    bystander = subscribed(hub, ADMIN, "balances")
    closed_before = metric("streambill_live_sockets_closed_total", reason="overflow")
    for customer_id in ("cus_1", "cus_2", "cus_3"):
        hub.publish_ledger(entry(customer_id, 1))
    hub.publish_ledger(entry("cus_1", 2))  # coalesced: still three customers
    assert subscriber.close_code is None
    assert subscriber.pending_customers == 3

    hub.publish_ledger(entry("cus_9", 1))
    assert subscriber.close_code == 1013
    assert subscriber.pending_messages == 0  # its memory is released at once
    assert hub.subscriber_count == 1
    assert metric("streambill_live_sockets_closed_total", reason="overflow") - closed_before == 1
    hub.publish_ledger(entry("cus_9", 2))  # nothing is queued for it any more
    assert subscriber.pending_messages == 0
    latest = {m["customer_id"]: m["seq"] for m in messages(bystander)}
    assert latest == {"cus_1": 2, "cus_2": 1, "cus_3": 1, "cus_9": 2}  # unaffected


async def test_a_closed_subscriber_tells_its_sender() -> None:
    hub = LiveHub()
    subscriber = subscribed(hub, ADMIN)
    hub.publish_ledger(entry("cus_1", 1))
    subscriber.request_close(1013, "too many pending updates")
    with pytest.raises(SubscriberClosed) as closed:
        await subscriber.next_batch()
    assert (closed.value.code, closed.value.reason) == (1013, "too many pending updates")


def test_control_replies_are_bounded() -> None:
    hub = LiveHub(max_control=2)
    subscriber = hub.subscribe(ADMIN)
    assert subscriber.send_control({"type": "a"}) and subscriber.send_control({"type": "b"})
    assert not subscriber.send_control({"type": "c"})


def test_unsubscribe_releases_every_index_entry() -> None:
    hub = LiveHub()
    subscribers = [subscribed(hub, p) for p in EXPECTED_CUSTOMERS]
    for subscriber in subscribers:
        hub.unsubscribe(subscriber)
        hub.unsubscribe(subscriber)  # idempotent
    assert hub.subscriber_count == 0
    assert (hub._by_reseller, hub._by_customer, hub._by_credential, hub._admins) == (
        {},
        {},
        {},
        set(),
    )


def test_the_feed_refuses_topics_it_has_no_handler_for() -> None:
    with pytest.raises(ValueError, match=r"billing\.usage\.v1"):
        LiveFeed("127.0.0.1:1", LiveHub(), topics=["billing.ledger.v1", "billing.usage.v1"])


# --- senders ------------------------------------------------------------------------------


class FakeSocket:
    """Records what a pump sends; ``stalled`` never completes a send (a client that stopped
    reading with a full TCP window)."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.stalled = stalled
        self.changed = asyncio.Event()
        self._never = asyncio.Event()

    async def send(self, text: str) -> None:
        if self.stalled:
            await self._never.wait()
        self.sent.append(orjson.loads(text))
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.changed.set()

    async def wait_until(self, predicate: Any) -> None:
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def serve(hub: LiveHub, subscriber: Subscriber, socket: FakeSocket) -> None:
    """What the WebSocket route does around its sender."""
    try:
        await pump(subscriber, socket.send, socket.close)
    finally:
        hub.unsubscribe(subscriber)
        subscriber.finish()


async def test_a_stalled_socket_neither_blocks_publishing_nor_grows_without_bound() -> None:
    hub = LiveHub(coalesce_after=16)
    fast_socket, stalled_socket = FakeSocket(), FakeSocket(stalled=True)
    fast = subscribed(hub, ADMIN, "balances")
    stalled = subscribed(hub, ADMIN, "balances", max_pending_customers=50)
    tasks = [
        asyncio.create_task(serve(hub, fast, fast_socket)),
        asyncio.create_task(serve(hub, stalled, stalled_socket)),
    ]
    customers = [f"cus_{n}" for n in range(50)]
    for seq in range(1, 41):
        for customer_id in customers:
            hub.publish_ledger(entry(customer_id, seq))
            # The loop runs the senders between publishes (the feed yields once per fetch).
            await asyncio.sleep(0)
        assert stalled.pending_messages <= 16 + 50
        assert stalled.pending_customers <= 50
    await fast_socket.wait_until(lambda: len(fast_socket.sent) == 40 * 50)
    by_customer: dict[str, list[int]] = defaultdict(list)
    for message in fast_socket.sent:
        by_customer[message["customer_id"]].append(message["seq"])
    assert all(seqs == list(range(1, 41)) for seqs in by_customer.values())
    assert len(stalled_socket.sent) == 0

    hub.publish_ledger(entry("cus_new", 1))  # one customer too many for the stalled socket
    assert stalled.close_code == 1013
    assert fast.close_code is None
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_close_principal_closes_every_socket_of_that_credential_only() -> None:
    hub = LiveHub()
    revoked_key = Principal("reseller", "res_a", "reseller", "k-revoked")
    sockets = [FakeSocket(), FakeSocket(), FakeSocket()]
    subscribers = [
        subscribed(hub, revoked_key),
        subscribed(hub, revoked_key),
        subscribed(hub, RESELLER_A),  # same tenant, another key: stays
    ]
    tasks = [
        asyncio.create_task(serve(hub, s, socket))
        for s, socket in zip(subscribers, sockets, strict=True)
    ]
    assert await hub.close_principal("k-revoked") == 2
    assert [socket.closed for socket in sockets] == [(4401, "unauthorized")] * 2 + [None]
    assert hub.subscriber_count == 1
    hub.publish_ledger(entry("cus_1", 1))
    await sockets[2].wait_until(lambda: len(sockets[2].sent) == 1)
    assert await hub.close_all() == 1
    assert sockets[2].closed == (1001, "server shutting down")
    await asyncio.gather(*tasks)
    assert hub.subscriber_count == 0


async def test_the_sender_counts_what_it_sent() -> None:
    hub = LiveHub()
    socket = FakeSocket()
    subscriber = subscribed(hub, CUSTOMER_1, "balances")
    before = metric("streambill_live_messages_sent_total", channel="balances")
    task = asyncio.create_task(serve(hub, subscriber, socket))
    subscriber.send_control({"type": "welcome"})
    hub.publish_ledger(entry("cus_1", 1))
    hub.publish_ledger(entry("cus_1", 2))
    await socket.wait_until(lambda: len(socket.sent) == 3)
    assert [m["type"] for m in socket.sent] == ["welcome", "balance", "balance"]
    assert metric("streambill_live_messages_sent_total", channel="balances") - before == 2
    subscriber.request_close(1000, "bye")
    await task
    assert socket.closed == (1000, "bye")


async def test_a_socket_closed_mid_batch_sends_not_one_message_more() -> None:
    hub = LiveHub()
    subscriber = subscribed(hub, CUSTOMER_1, "balances")
    socket = FakeSocket()
    for seq in (1, 2, 3):
        hub.publish_ledger(entry("cus_1", seq))

    async def send_then_revoke(text: str) -> None:
        await socket.send(text)
        subscriber.request_close(4401, "unauthorized")  # revoked while the batch is sent

    await pump(subscriber, send_then_revoke, socket.close)
    assert [m["seq"] for m in socket.sent] == [1]
    assert socket.closed == (4401, "unauthorized")

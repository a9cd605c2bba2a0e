"""The hub: subscribers (one per socket) with bounded, coalescing buffers; the sender."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import orjson

from streambill.api.live.metrics import (
    CLOSED,
    COALESCED,
    DROPPED,
    SENT_BY_CHANNEL,
    SOCKETS,
)
from streambill.control.principal import Principal
from streambill.domain.money import format_micros
from streambill.errors import InvalidEvent

logger = logging.getLogger(__name__)

_EVENT_CHANNELS: Final = ("alerts", "commissions")
# Alerts about a suspected customer, which the customer itself must not see.
INVESTIGATION_ALERTS: Final = frozenset({"fraud_suspected"})
CLOSE_TRY_AGAIN_LATER: Final = 1013


def _encode(message: Mapping[str, Any]) -> str:
    # Encoded once per published message, whatever the number of sockets it goes to.
    return orjson.dumps(message).decode()


def balance_message(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The balance push for a ``billing.ledger.v1`` entry; :class:`InvalidEvent` if malformed.

    >>> m = balance_message({"entry_id": "e1", "customer_id": "cus_1", "reseller_id": None,
    ...     "kind": "usage", "amount_micros": -225000, "balance_micros": 19775000,
    ...     "currency": "EUR", "seq": 2, "applied_at": "2026-11-25T10:00:00+00:00"})
    >>> m["type"], m["balance"], m["seq"]
    ('balance', '19.775', 2)
    """
    get = entry.get
    customer_id, reseller_id, seq = get("customer_id"), get("reseller_id"), get("seq")
    balance_micros, amount_micros = get("balance_micros"), get("amount_micros")
    texts = (customer_id, get("currency"), get("entry_id"), get("kind"), get("applied_at"))
    if (
        type(balance_micros) is not int
        or not all(type(v) is int for v in (seq, amount_micros))
        or not all(type(v) is str for v in texts)
        or not _optional_str(reseller_id)
    ):
        raise InvalidEvent("ledger entry lacks a required field or has one of the wrong type")
    return {
        "type": "balance",
        "customer_id": customer_id,
        "reseller_id": reseller_id,
        "currency": get("currency"),
        "balance_micros": balance_micros,
        "balance": format_micros(balance_micros),
        "seq": seq,
        "applied_at": get("applied_at"),
        "entry_id": get("entry_id"),
        "kind": get("kind"),
        "amount_micros": amount_micros,
    }


def _optional_str(value: object) -> bool:
    return value is None or type(value) is str


class SubscriberClosed(Exception):
    """Raised by :meth:`Subscriber.next_batch` once the server decided to close the socket."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class _Slot:
    """An unsent balance message; replaced in place while its socket is behind."""

    __slots__ = ("customer_id", "seq", "text")

    def __init__(self, customer_id: str, seq: int, text: str) -> None:
        self.customer_id = customer_id
        self.seq = seq
        self.text = text


class Subscriber:
    """One socket's principal, channels and bounded outbound buffer.

    Made by :meth:`LiveHub.subscribe`; drained by :func:`pump`.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        principal: Principal,
        *,
        coalesce_after: int,
        max_pending_customers: int,
        max_events_buffered: int,
        max_control: int,
    ) -> None:
        if min(coalesce_after, max_pending_customers, max_events_buffered, max_control) < 1:
            raise ValueError("every subscriber bound must be at least 1")
        self.id = next(self._ids)
        self.principal = principal
        self.channels: set[str] = set()
        self._coalesce_after = coalesce_after
        self._max_pending_customers = max_pending_customers
        self._max_events = max_events_buffered
        self._max_control = max_control
        self._control: deque[str] = deque()
        self._events: dict[str, deque[str]] = {c: deque() for c in _EVENT_CHANNELS}
        self._dropped: dict[str, int] = dict.fromkeys(_EVENT_CHANNELS, 0)
        self._balances: deque[_Slot] = deque()
        # customer -> its newest unsent slot: the customers that wait, and where to coalesce.
        self._latest: dict[str, _Slot] = {}
        self._ready = asyncio.Event()
        self._close_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"Subscriber({self.id}, {self.principal.label()})"

    @property
    def pending_customers(self) -> int:
        return len(self._latest)

    @property
    def pending_messages(self) -> int:
        events = sum(len(q) for q in self._events.values())
        return len(self._control) + events + len(self._balances)

    def subscribe(self, channels: Iterable[str]) -> None:
        """Add channels (the caller has checked them against :data:`CHANNELS`)."""
        self.channels.update(channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Remove channels and forget what of them was not sent yet."""
        for channel in channels:
            self.channels.discard(channel)
            if channel == "balances":
                self._balances.clear()
                self._latest.clear()
            elif channel in self._events:
                self._events[channel].clear()
                self._dropped[channel] = 0

    def push_balance(self, customer_id: str, seq: int, text: str) -> bool:
        """Queue a balance message; False when it would exceed the pending-customer bound."""
        slot = self._latest.get(customer_id)
        if slot is not None and (seq <= slot.seq or len(self._balances) >= self._coalesce_after):
            # Behind (or a replayed, older entry): keep one message per customer, the latest.
            if seq > slot.seq:
                slot.seq, slot.text = seq, text
            COALESCED.inc()
            self._ready.set()
            return True
        if slot is None and len(self._latest) >= self._max_pending_customers:
            return False
        slot = _Slot(customer_id, seq, text)
        self._balances.append(slot)
        self._latest[customer_id] = slot
        self._ready.set()
        return True

    def push_event(self, channel: str, text: str) -> None:
        """Queue an alert or a commission; the oldest is dropped (and counted) when full."""
        queue = self._events[channel]
        if len(queue) >= self._max_events:
            queue.popleft()
            self._dropped[channel] += 1
            DROPPED.labels(channel).inc()
        queue.append(text)
        self._ready.set()

    def send_control(self, message: Mapping[str, Any]) -> bool:
        """Queue a reply to the client (welcome, error, ack); False when too many wait."""
        if len(self._control) >= self._max_control:
            return False
        self._control.append(_encode(message))
        self._ready.set()
        return True

    def request_close(self, code: int, reason: str) -> None:
        """Ask the sender to close the socket; what was not sent is discarded. First wins."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self._control.clear()
        self._balances.clear()
        self._latest.clear()
        for queue in self._events.values():
            queue.clear()
        self._ready.set()
        self._close_requested.set()

    async def wait_close_requested(self) -> None:
        await self._close_requested.wait()

    def finish(self) -> None:
        """Called by the socket's handler when the socket is gone."""
        self._finished.set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def take(self, max_messages: int = 256) -> list[tuple[str, str]]:
        """Up to ``max_messages`` ``(channel, text)`` to send now, in the order to send them:
        replies, then alerts and commissions (each after its dropped notice), then balances."""
        out: list[tuple[str, str]] = []
        while self._control and len(out) < max_messages:
            out.append(("control", self._control.popleft()))
        for channel in _EVENT_CHANNELS:
            queue = self._events[channel]
            dropped = self._dropped[channel]
            if dropped and len(out) < max_messages:
                notice = {"type": "dropped", "channel": channel, "count": dropped}
                out.append(("control", _encode(notice)))
                self._dropped[channel] = 0
            while queue and len(out) < max_messages:
                out.append((channel, queue.popleft()))
        while self._balances and len(out) < max_messages:
            slot = self._balances.popleft()
            if self._latest.get(slot.customer_id) is slot:
                del self._latest[slot.customer_id]
            out.append(("balances", slot.text))
        return out

    async def next_batch(self, max_messages: int = 256) -> list[tuple[str, str]]:
        """Wait for messages to send; :class:`SubscriberClosed` once a close was requested."""
        while True:
            if self.close_code is not None:
                raise SubscriberClosed(self.close_code, self.close_reason)
            batch = self.take(max_messages)
            if batch:
                return batch
            # No await between take() and clear(): a publish cannot slip in between.
            self._ready.clear()
            await self._ready.wait()


async def pump(
    subscriber: Subscriber,
    send: Callable[[str], Awaitable[None]],
    close: Callable[[int, str], Awaitable[None]],
) -> None:
    """The socket's one sender: drain ``subscriber`` into ``send`` until a close is requested,
    then ``close(code, reason)``. Errors of ``send`` (the client left) propagate."""
    while True:
        try:
            batch = await subscriber.next_batch()
        except SubscriberClosed as closed:
            await close(closed.code, closed.reason)
            return
        for channel, text in batch:
            if subscriber.close_code is not None:
                break  # revoked or overflowed mid-batch: not one message more
            await send(text)
            SENT_BY_CHANNEL[channel].inc()


class LiveHub:
    """Who gets which live message: subscribers indexed by what they may see.

    ``max_pending_customers``, ``coalesce_after``, ``max_events_buffered`` and
    ``max_control`` bound each subscriber's buffer (see the module docstring).
    """

    def __init__(
        self,
        *,
        max_pending_customers: int = 10_000,
        coalesce_after: int = 1_024,
        max_events_buffered: int = 256,
        max_control: int = 32,
    ) -> None:
        self._bounds = {
            "max_pending_customers": max_pending_customers,
            "coalesce_after": coalesce_after,
            "max_events_buffered": max_events_buffered,
            "max_control": max_control,
        }
        self._all: set[Subscriber] = set()
        self._admins: set[Subscriber] = set()
        self._by_reseller: dict[str, set[Subscriber]] = {}
        self._by_customer: dict[str, set[Subscriber]] = {}
        self._by_credential: dict[str, set[Subscriber]] = {}

    @property
    def subscriber_count(self) -> int:
        return len(self._all)

    def subscribe(
        self, principal: Principal, *, max_pending_customers: int | None = None
    ) -> Subscriber:
        """Register a socket's principal; it receives nothing until it picks channels."""
        bounds = dict(self._bounds)
        if max_pending_customers is not None:
            bounds["max_pending_customers"] = max_pending_customers
        subscriber = Subscriber(principal, **bounds)
        self._all.add(subscriber)
        if principal.is_admin:
            self._admins.add(subscriber)
        elif (place := self._index_of(principal)) is not None:
            index, key = place
            index.setdefault(key, set()).add(subscriber)
        self._by_credential.setdefault(principal.credential_id, set()).add(subscriber)
        SOCKETS.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a subscriber (idempotent): nothing is queued for it any more."""
        if subscriber not in self._all:
            return
        self._all.discard(subscriber)
        self._admins.discard(subscriber)
        principal = subscriber.principal
        if (place := self._index_of(principal)) is not None:
            _discard(*place, subscriber)
        _discard(self._by_credential, principal.credential_id, subscriber)
        SOCKETS.dec()

    def _index_of(self, principal: Principal) -> tuple[dict[str, set[Subscriber]], str] | None:
        """Where a non-admin principal's subscribers are indexed; None for one that sees no
        customer (a service key bound to nothing): it is registered but never matches."""
        if principal.reseller_scope is not None:
            return self._by_reseller, principal.reseller_scope
        if principal.customer_scope is not None:
            return self._by_customer, principal.customer_scope
        return None

    def _seeing_customer(
        self, channel: str, customer_id: str, reseller_id: str | None
    ) -> list[Subscriber]:
        # The indexes narrow the candidates; sees_customer stays the one scope rule.
        groups: list[Iterable[Subscriber]] = [self._admins, self._by_customer.get(customer_id, ())]
        if reseller_id is not None:
            groups.append(self._by_reseller.get(reseller_id, ()))
        return [
            subscriber
            for group in groups
            for subscriber in group
            if channel in subscriber.channels
            and subscriber.principal.sees_customer(customer_id, reseller_id)
        ]

    def publish_ledger(self, entry: Mapping[str, Any]) -> int:
        """Queue the balance push of one ledger entry; returns how many sockets get it.
        Raises :class:`InvalidEvent` for a malformed entry."""
        message = balance_message(entry)
        customer_id: str = message["customer_id"]
        seq: int = message["seq"]
        targets = self._seeing_customer("balances", customer_id, message["reseller_id"])
        if not targets:
            return 0
        text = _encode(message)
        for subscriber in targets:
            if not subscriber.push_balance(customer_id, seq, text):
                self._overflow(subscriber)
        return len(targets)

    def publish_alert(self, alert: Mapping[str, Any]) -> int:
        """Queue one ``billing.alerts.v1`` alert for the sockets that see its customer."""
        customer_id, reseller_id = alert.get("customer_id"), alert.get("reseller_id")
        if type(customer_id) is not str or not _optional_str(reseller_id):
            raise InvalidEvent("alert lacks customer_id or has a reseller_id that is no string")
        targets = self._seeing_customer("alerts", customer_id, reseller_id)
        if alert.get("kind") in INVESTIGATION_ALERTS:
            # Never to the suspect (or a service key bound to it): the admins and the
            # reseller, as the fraud-score reads.
            targets = [
                s
                for s in targets
                if s.principal.is_admin
                or (s.principal.role == "reseller" and s.principal.tenant_kind == "reseller")
            ]
        if targets:
            text = _encode({**alert, "type": "alert"})
            for subscriber in targets:
                subscriber.push_event("alerts", text)
        return len(targets)

    def publish_commission(self, commission: Mapping[str, Any]) -> int:
        """Queue one commission entry for the admins and the reseller it belongs to (as the
        REST and GraphQL reads: not for a service key bound to the reseller)."""
        reseller_id = commission.get("reseller_id")
        if type(reseller_id) is not str:
            raise InvalidEvent("commission lacks a reseller_id")
        groups = (self._admins, self._by_reseller.get(reseller_id, ()))
        targets = [
            subscriber
            for group in groups
            for subscriber in group
            if "commissions" in subscriber.channels
            and subscriber.principal.sees_money_of(reseller_id)
        ]
        if targets:
            text = _encode({**commission, "type": "commission"})
            for subscriber in targets:
                subscriber.push_event("commissions", text)
        return len(targets)

    def _overflow(self, subscriber: Subscriber) -> None:
        logger.warning(
            "live socket too far behind; closing it",
            extra={"subscriber": subscriber.id, "principal": subscriber.principal.label()},
        )
        CLOSED.labels("overflow").inc()
        subscriber.request_close(CLOSE_TRY_AGAIN_LATER, "too many pending updates")
        self.unsubscribe(subscriber)

    async def close_principal(
        self,
        credential_id: str,
        *,
        code: int = 4401,
        reason: str = "unauthorized",
        timeout_s: float = 5.0,
    ) -> int:
        """Close every socket authenticated by this key or session (revoked in-process);
        waits up to ``timeout_s`` for them to be gone. Returns how many there were."""
        subscribers = list(self._by_credential.get(credential_id, ()))
        CLOSED.labels("revoked").inc(len(subscribers))
        return await self._close(subscribers, code, reason, timeout_s)

    async def close_all(
        self, *, code: int = 1001, reason: str = "server shutting down", timeout_s: float = 5.0
    ) -> int:
        """Close every socket (shutdown: 1001, going away, so that clients reconnect)."""
        subscribers = list(self._all)
        CLOSED.labels("shutdown").inc(len(subscribers))
        return await self._close(subscribers, code, reason, timeout_s)

    async def _close(
        self, subscribers: list[Subscriber], code: int, reason: str, timeout_s: float
    ) -> int:
        for subscriber in subscribers:
            subscriber.request_close(code, reason)
            self.unsubscribe(subscriber)
        if not subscribers:
            return 0
        waits = [asyncio.ensure_future(s.wait_finished()) for s in subscribers]
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for wait in pending:
            wait.cancel()
        if pending:
            logger.warning("live sockets not closed in time", extra={"sockets": len(pending)})
        return len(subscribers)


def _discard(index: dict[str, set[Subscriber]], key: str, subscriber: Subscriber) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(subscriber)
        if not group:
            # Empty entries would otherwise pile up with the churn of tenants and keys.
            del index[key]

"""Live streams: the api's fan-out of ledger entries, alerts and commissions to WebSockets.

:class:`LiveFeed` reads the billing topics without a consumer group (every api replica
sees every message, from the end: live only) and publishes each message into a
:class:`LiveHub`. The hub hands each message to the :class:`Subscriber` s (one per socket)
whose principal may see it, found through indexes (admins, by reseller, by customer), so a
publish costs O(matching subscribers) and never awaits a socket.

Each subscriber buffers what its socket has not sent yet, with bounds (TigerBeetle style):

- balances: one message per ledger entry while the socket keeps up. Once
  ``coalesce_after`` balance messages wait, a new entry replaces the newest unsent message
  of its customer (latest seq wins), so a slow socket gets each customer's latest balance
  and a seq gap tells it that it was behind. When more than ``max_pending_customers``
  customers wait, the socket is closed with 1013 (try again later) instead of growing.
- alerts, commissions: never merged (each one means something); at most
  ``max_events_buffered`` wait per channel, the oldest is dropped, and the client is told
  with ``{"type": "dropped", "channel": ..., "count": ...}``.

:func:`pump` is the one sender per socket. The hub is not thread-safe: publish from the
event loop that runs the sockets.
"""

from __future__ import annotations

from streambill.api.live.feed import LIVE_TOPICS, LiveFeed
from streambill.api.live.hub import (
    CLOSE_TRY_AGAIN_LATER,
    LiveHub,
    Subscriber,
    SubscriberClosed,
    balance_message,
    pump,
)
from streambill.api.live.metrics import CHANNELS, CLOSED
from streambill.streams.topics import COMMISSIONS as COMMISSIONS_TOPIC

__all__ = [
    "CHANNELS",
    "CLOSED",
    "CLOSE_TRY_AGAIN_LATER",
    "COMMISSIONS_TOPIC",
    "LIVE_TOPICS",
    "LiveFeed",
    "LiveHub",
    "Subscriber",
    "SubscriberClosed",
    "balance_message",
    "pump",
]

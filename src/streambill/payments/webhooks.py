"""Taking in a verified Stripe webhook, exactly once.

The Stripe event id is written to ``stripe_events`` in the same transaction as the outbox rows
of the payment events it became. A redelivery finds the id and changes nothing; two deliveries
racing each other collide on the primary key, and the loser answers like a redelivery. The
payment event ids (see :mod:`.stripe_events`) make a second line of defence in the worker.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from streambill.control.models import StripeEvent
from streambill.control.outbox import enqueue
from streambill.control.plane import ControlPlane
from streambill.errors import InvalidEvent
from streambill.payments.stripe_events import payment_events
from streambill.streams.topics import PAYMENTS


def decode_event(payload: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("the webhook body is not JSON", code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise InvalidEvent("not a Stripe event (no id)")
    if len(event["id"]) > 255 or not isinstance(event.get("type"), str):
        raise InvalidEvent("not a Stripe event (id or type)")
    return event


async def take_in(cp: ControlPlane, event: dict[str, Any]) -> tuple[bool, int]:
    """Record the event and queue its payment events: (new, number of payment events).
    ``new`` is False for a delivery of an event already taken in."""
    payments = payment_events(event)  # raises InvalidEvent before anything is written
    now = cp.clock()
    try:
        async with cp.sessions.begin() as session:
            if await session.get(StripeEvent, event["id"]) is not None:
                return False, 0
            session.add(
                StripeEvent(
                    id=event["id"], type=event["type"], payments=len(payments), received_at=now
                )
            )
            await session.flush()
            for payment in payments:
                enqueue(session, PAYMENTS, payment["customer_id"], payment, now)
    except IntegrityError:
        return False, 0  # a concurrent delivery of the same event won
    if payments:
        cp.on_outbox()
    return True, len(payments)

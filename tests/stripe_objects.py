"""Stripe objects and events for tests, built from Stripe's own examples.

``tests/fixtures/stripe/*.json`` are Stripe's example objects (the ``openapi`` repository's
fixtures, in the shapes the pinned API version returns); a test changes only the fields it
is about (ids, amounts, statuses, links), so every payload keeps the fields and nesting Stripe
really sends, the ones the code must not depend on included.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from recorded_stripe import fixture
from streambill.payments.gateway import STRIPE_API_VERSION

_numbers = itertools.count(1)


def stripe_object(name: str, **fields: Any) -> dict[str, Any]:
    """The example ``name`` object (``refund``, ``dispute``, ``charge``, ``payment_intent``,
    ...) with ``fields`` replaced."""
    obj = copy.deepcopy(fixture(name))
    obj.update(fields)
    return obj


def stripe_event(
    kind: str, obj: dict[str, Any], *, created: int, event_id: str = ""
) -> dict[str, Any]:
    """An event of type ``kind`` about ``obj``, rendered in the pinned API version."""
    event = copy.deepcopy(fixture("event"))
    event.update(
        id=event_id or f"evt_test_{next(_numbers):08d}",
        type=kind,
        created=created,
        api_version=STRIPE_API_VERSION,
        data={"object": obj},
    )
    return event


def refund(
    refund_id: str,
    amount: int,
    status: str,
    *,
    intent: str | None,
    charge: str | None = None,
    currency: str = "eur",
) -> dict[str, Any]:
    return stripe_object(
        "refund",
        id=refund_id,
        amount=amount,
        status=status,
        currency=currency,
        payment_intent=intent,
        charge=charge or f"ch_of_{intent}",
    )


def dispute(
    dispute_id: str,
    amount: int,
    status: str,
    *,
    intent: str | None,
    charge: str | None = None,
    currency: str = "eur",
) -> dict[str, Any]:
    return stripe_object(
        "dispute",
        id=dispute_id,
        amount=amount,
        status=status,
        currency=currency,
        payment_intent=intent,
        charge=charge or f"ch_of_{intent}",
    )


def succeeded_intent(
    intent_id: str, amount: int, customer_id: str, *, currency: str = "eur"
) -> dict[str, Any]:
    return stripe_object(
        "payment_intent",
        id=intent_id,
        amount=amount,
        amount_received=amount,
        currency=currency,
        status="succeeded",
        metadata={"customer_id": customer_id},
        latest_charge=f"ch_of_{intent_id}",
        last_payment_error=None,
        next_action=None,
        canceled_at=None,
    )

"""``POST /v2/stripe/webhook``: Stripe's events, verified, taken in once each.

No bearer key: the ``Stripe-Signature`` header authenticates the request. 200 for every
verified event (also ones that move no money, and repeats), 400 ``invalid_signature`` for a
forged, tampered, expired or future-dated request, 422 for a verified body that is not a
Stripe event of a known shape (Stripe keeps it and retries; the log says why), 503 when an
event that saves a payment method cannot be read back from Stripe (Stripe retries).
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel

from streambill.api.deps import Runtime
from streambill.errors import StreambillError
from streambill.payments.signature import verify
from streambill.payments.webhooks import decode_event, take_in

router = APIRouter(prefix="/v2/stripe", tags=["payments"])
log = logging.getLogger(__name__)


class WebhookAnswer(BaseModel):
    received: bool = True
    duplicate: bool
    payments: int


@router.post("/webhook", response_model=WebhookAnswer)
async def stripe_webhook(request: Request, runtime: Runtime) -> WebhookAnswer:
    secrets = runtime.settings.stripe_webhook_secrets
    if not secrets:
        raise StreambillError("Stripe webhooks are not configured", code="unavailable")
    payload = await request.body()
    try:
        verify(payload, request.headers.get("stripe-signature"), secrets, now_s=time.time())
    except StreambillError as exc:
        log.warning("stripe webhook refused: %s", exc.message)
        raise
    event = decode_event(payload)
    new, payments = await take_in(runtime.control, event, runtime.stripe)
    log.info(
        "stripe webhook",
        extra={
            "stripe_event": event["id"],
            "type": event["type"],
            "new": new,
            "payments": payments,
        },
    )
    return WebhookAnswer(duplicate=not new, payments=payments)

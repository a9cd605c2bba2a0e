"""``POST /v2/usage``: services post usage over HTTP; it goes to ``billing.usage.v1``.

202 means the broker acknowledged every accepted event (an idempotent producer, acks=all):
from then on the event is as safe as one produced to Kafka directly. Events are validated as
the worker would (an event accepted here is never dead-lettered as invalid); events for
customers outside the caller's scope are refused as ``unknown_customer``, like unknown ones.
A retry with the same ``event_id`` is harmless: the worker applies each event id once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from streambill.api.deps import ApiRuntime, CurrentPrincipal, Runtime
from streambill.api.errors import STATUS_BY_CODE
from streambill.api.ingest import ParsedUsage, parse_usage_body
from streambill.control.principal import Principal
from streambill.streams.topics import USAGE

router = APIRouter(prefix="/v2", tags=["usage"])
SEND_TIMEOUT_S = 10.0


class UsageRejection(BaseModel):
    index: int
    event_id: str | None
    code: str
    message: str


class UsageAccepted(BaseModel):
    accepted: int = Field(description="Events the broker acknowledged.")
    rejected: int = 0
    errors: list[UsageRejection] = Field(default_factory=list)


_EXAMPLE_EVENT = {
    "event_id": "call-8812-part-1",
    "customer_id": "cus_1",
    "meter": "call_minutes",
    "quantity": "1.5",
    "occurred_at": "2026-11-25T10:00:00+00:00",
    "attributes": {"call_id": "8812"},
}


@router.post(
    "/usage",
    response_model=UsageAccepted,
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "object", "description": "one usage event (CONTRACT §4)"},
                            {
                                "type": "object",
                                "required": ["events"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 1000,
                                        "items": {"type": "object"},
                                    }
                                },
                            },
                        ]
                    },
                    "examples": {
                        "one": {"value": _EXAMPLE_EVENT},
                        "batch": {"value": {"events": [_EXAMPLE_EVENT]}},
                    },
                }
            },
        }
    },
)
async def post_usage(request: Request, runtime: Runtime, principal: CurrentPrincipal) -> Any:
    """One usage event, or ``{"events": [...]}`` with up to 1,000. Answers 202 with the
    count accepted and each rejected event's index, code and message; 422 (or 404 for an
    unknown customer) when nothing could be accepted."""
    parsed = await accept_usage(runtime, principal, await request.body())
    errors = [r.as_dict() for r in parsed.rejected]
    if not parsed.accepted:
        first = parsed.rejected[0]
        status = STATUS_BY_CODE.get(first.code, 422) if not parsed.batch else 422
        code = first.code if not parsed.batch else "invalid_event"
        message = first.message if not parsed.batch else "no event of the batch was accepted"
        return JSONResponse(
            {"error": {"code": code, "message": message, "details": errors}}, status_code=status
        )
    return UsageAccepted(accepted=len(parsed.accepted), rejected=len(errors), errors=errors)  # type: ignore[arg-type]


async def accept_usage(runtime: ApiRuntime, principal: Principal, body: bytes) -> ParsedUsage:
    """Parse, keep what is in the principal's scope, produce it and wait for the broker."""
    parsed = parse_usage_body(body, now=datetime.now(UTC))
    parsed = await _scope(parsed, runtime, principal)
    if parsed.accepted:
        await runtime.producer.send(USAGE, parsed.records(), SEND_TIMEOUT_S)
    return parsed


async def _scope(parsed: ParsedUsage, runtime: ApiRuntime, principal: Principal) -> ParsedUsage:
    if principal.is_admin:
        return parsed
    outside = {
        customer_id
        for customer_id in parsed.customer_ids()
        if not await runtime.control.sees_customer(principal, customer_id)
    }
    return parsed.reject_customers(
        outside, code="unknown_customer", message="no such customer in this key's scope"
    )

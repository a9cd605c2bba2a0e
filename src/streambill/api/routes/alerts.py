"""Recent alerts (low balance, depleted, recovered, declined auto top-ups, predicted
depletion, suspected fraud) as the ClickHouse sink stored them: the history behind what
``/v2/stream`` pushes live.

Scope as everywhere: the admin reads everyone's (or one customer's or reseller's); a reseller
its customers'; a customer its own. Like the live stream, a customer never reads
``fraud_suspected`` alerts about itself: they are for the platform and its reseller.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from streambill.analytics.alerts import ALERTS_LIMIT_MAX, AlertRecord, recent_alerts
from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.live.hub import INVESTIGATION_ALERTS
from streambill.api.params import ANY_ID_PATTERN
from streambill.control.principal import Principal
from streambill.errors import NotFound, StreambillError

router = APIRouter(prefix="/v2/alerts", tags=["alerts"])

# the live hub's rule, one list: alerts for investigators, never for the suspect
HIDDEN_FROM_CUSTOMERS: Final = tuple(sorted(INVESTIGATION_ALERTS))


class AlertPublic(BaseModel):
    alert_id: str
    customer_id: str
    reseller_id: str | None
    kind: str
    details: dict[str, Any] = Field(description="What the alert's producer attached.")
    created_at: datetime


class AlertList(BaseModel):
    alerts: list[AlertPublic]


def alert_public(row: AlertRecord) -> AlertPublic:
    try:
        details = orjson.loads(row.details) if row.details else {}
    except orjson.JSONDecodeError:
        details = {"text": row.details}
    return AlertPublic(
        alert_id=row.alert_id,
        customer_id=row.customer_id,
        reseller_id=row.reseller_id,
        kind=row.kind,
        details=details if isinstance(details, dict) else {"value": details},
        # the column is UTC; the driver may hand it back naive
        created_at=row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC),
    )


async def _scope(
    runtime: Any, principal: Principal, customer_id: str | None, reseller_id: str | None
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(customer filter, reseller filter, hidden kinds) for this principal; 404 outside."""
    if customer_id is not None:
        await runtime.control.require_customer(principal, customer_id)
    if principal.is_admin:
        return customer_id, reseller_id, ()
    if principal.customer_scope is not None:
        if reseller_id is not None:
            raise NotFound(f"reseller {reseller_id!r} not found")
        return principal.customer_scope, None, HIDDEN_FROM_CUSTOMERS
    scope = principal.reseller_scope
    if scope is None or (reseller_id is not None and reseller_id != scope):
        raise NotFound(f"reseller {reseller_id!r} not found")
    return customer_id, scope, ()


@router.get("", response_model=AlertList)
async def list_alerts(
    runtime: Runtime,
    principal: CurrentPrincipal,
    customer_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
    reseller_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
    kind: Annotated[list[str] | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=ALERTS_LIMIT_MAX)] = 50,
) -> AlertList:
    """The newest alerts in the caller's scope (``kind`` may repeat), each once; as fresh as
    the sink's last flush (about a second)."""
    kinds = tuple(kind or ())
    for name in kinds:
        if not name or len(name) > 64 or not name.replace("_", "").isalpha():
            raise StreambillError(f"kind: not an alert kind: {name[:64]!r}", code="invalid_request")
    customer, reseller, hidden = await _scope(runtime, principal, customer_id, reseller_id)
    rows = await runtime.clickhouse.run(
        recent_alerts,
        customer_id=customer,
        reseller_id=reseller,
        kinds=kinds,
        exclude_kinds=hidden,
        limit=limit,
    )
    return AlertList(alerts=[alert_public(r) for r in rows])

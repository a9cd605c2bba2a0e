"""Fraud: manual labels the fraud agent learns from, and the scores it emits.

- ``POST /v2/customers/{id}/fraud-labels``, ``GET`` the same path: the admin and the owning
  reseller (a customer or service key: 403; anyone else: 404). A label is stored and
  published to ``streambill.fraud-labels.v1`` through the outbox (control/fraudlabels.py).
- ``GET /v2/customers/{id}/fraud-scores``: the customer's scores from ClickHouse, newest
  first, each score once; same principals.
- ``GET /v2/fraud/suspected``: suspected events, the admin's of everyone (or one reseller),
  a reseller's of its own customers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from streambill.analytics.fraud_scores import SCORES_LIMIT_MAX
from streambill.api import mlreads
from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.api.schemas import FraudScoreList
from streambill.control import fraudlabels
from streambill.control.schemas import FraudLabelCreate, FraudLabelPublic, Page

router = APIRouter(prefix="/v2", tags=["fraud"])
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=ANY_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=SCORES_LIMIT_MAX)]


@router.post(
    "/customers/{customer_id}/fraud-labels", response_model=FraudLabelPublic, status_code=201
)
async def create_fraud_label(
    customer_id: CustomerId, body: FraudLabelCreate, runtime: Runtime, principal: CurrentPrincipal
) -> FraudLabelPublic:
    """Flag the customer (or one of its events, ``event_id``) as fraud, or clear it
    (``fraud: false``). Stored, then published to ``streambill.fraud-labels.v1`` (key
    ``customer_id``) by the outbox relay: at least once, even across a broker outage."""
    return await fraudlabels.create_label(runtime.control, principal, customer_id, body)


@router.get("/customers/{customer_id}/fraud-labels", response_model=Page[FraudLabelPublic])
async def list_fraud_labels(
    customer_id: CustomerId,
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Page[FraudLabelPublic]:
    return await fraudlabels.list_labels(
        runtime.control, principal, customer_id, limit=limit, cursor=cursor
    )


@router.get("/customers/{customer_id}/fraud-scores", response_model=FraudScoreList)
async def list_fraud_scores(
    customer_id: CustomerId, runtime: Runtime, principal: CurrentPrincipal, limit: Limit = 100
) -> FraudScoreList:
    """Scores of the customer's usage and payment events, newest first, each once (as fresh
    as the ClickHouse sink's last flush, about a second)."""
    return await mlreads.customer_scores(runtime, principal, customer_id, limit)


@router.get("/fraud/suspected", response_model=FraudScoreList)
async def list_suspected(
    runtime: Runtime,
    principal: CurrentPrincipal,
    reseller_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
    limit: Limit = 100,
) -> FraudScoreList:
    """Events scored above their threshold, newest first. The admin: every customer's, or
    one reseller's (``reseller_id``); a reseller: its own customers' (another id: 404)."""
    return await mlreads.suspected(runtime, principal, reseller_id, limit)

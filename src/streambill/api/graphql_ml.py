"""GraphQL for online ML: ``forecast(customerId)`` and ``fraudScores(customerId, limit)``.

The same functions as the REST routes (api/mlreads.py), with the request's principal: the
forecast for whoever sees the customer's balance; scores for the admin and the owning
reseller (a customer or service key: ``FORBIDDEN``; anyone else: ``NOT_FOUND``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from streambill.analytics.fraud_scores import SCORES_LIMIT_MAX
from streambill.api import mlreads
from streambill.api.graphql_base import Context, Micros, call, ctx
from streambill.api.schemas import ForecastPublic, FraudScorePublic

# A fraud score or its threshold: a model output in [0, 1], never money.
Score = float


@strawberry.type
class Forecast:
    customer_id: str
    currency: str
    daily_units: list[float]
    depletion_at: datetime | None
    recommended_topup: str | None
    recommended_topup_micros: Micros | None
    balance_micros: Micros
    days_learned: int
    updated_at: datetime | None

    @staticmethod
    def of(f: ForecastPublic) -> Forecast:
        topup = f.recommended_topup_micros
        return Forecast(
            customer_id=f.customer_id,
            currency=f.currency,
            daily_units=list(f.daily_units),
            depletion_at=f.depletion_at,
            recommended_topup=f.recommended_topup,
            recommended_topup_micros=Micros(topup) if topup is not None else None,
            balance_micros=Micros(f.balance_micros),
            days_learned=f.days_learned,
            updated_at=f.updated_at,
        )


@strawberry.type
class FraudScore:
    score_id: str
    customer_id: str
    reseller_id: str | None
    source: str
    event_id: str
    kind: str
    score: Score
    unsupervised: Score
    supervised: Score | None
    threshold: Score
    suspected: bool
    occurred_at: datetime
    scored_at: datetime

    @staticmethod
    def of(s: FraudScorePublic) -> FraudScore:
        return FraudScore(**s.model_dump())


@strawberry.type
class MlQueries:
    @strawberry.field(description="A customer's usage forecast for the next 7 days.")
    async def forecast(self, info: Info[Context, Any], customer_id: str) -> Forecast:
        here = ctx(info)
        found = await call(lambda: mlreads.forecast(here.runtime, here.principal, customer_id))
        return Forecast.of(found)

    @strawberry.field(description="A customer's fraud scores, newest first (admin, reseller).")
    async def fraud_scores(
        self, info: Info[Context, Any], customer_id: str, limit: int = 100
    ) -> list[FraudScore]:
        here = ctx(info)
        if not 1 <= limit <= SCORES_LIMIT_MAX:
            raise GraphQLError(
                f"limit must be 1..{SCORES_LIMIT_MAX}", extensions={"code": "INVALID_REQUEST"}
            )
        found = await call(
            lambda: mlreads.customer_scores(here.runtime, here.principal, customer_id, limit)
        )
        return [FraudScore.of(s) for s in found.items]

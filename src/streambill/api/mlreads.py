"""Online-ML reads shared by REST and GraphQL: a customer's usage forecast (control plane, the
``customer_forecasts`` row the forecast agent keeps), its fraud scores and the suspected
events of a reseller (ClickHouse, ``fraud_scores``).

Scope: the forecast is the customer's own business (like its balance: the customer itself,
its reseller, the admin, a service key bound to it). Fraud scores are for the people who
act on them, the admin and the owning reseller: a customer or a service key that sees the
customer gets 403 ``forbidden`` (a suspect must not watch its own score to game it); anyone
else 404, as for an id that does not exist.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final

from streambill.analytics import fraud_scores
from streambill.analytics.fraud_scores import FraudScoreRow
from streambill.api.deps import ApiRuntime
from streambill.api.schemas import ForecastPublic, FraudScoreList, FraudScorePublic
from streambill.control.fraudlabels import require_fraud_staff
from streambill.control.models import CustomerForecast, Tenant
from streambill.control.plans import visible_reseller
from streambill.control.principal import Principal
from streambill.domain.money import format_micros
from streambill.errors import Forbidden, InvariantViolation, NotFound, check

FORECAST_DAYS: Final = 7
UNITS_STEP: Final = Decimal("0.001")
SCORE_DECIMALS: Final = 4


def units_number(text: str) -> float:
    """A stored decimal string of units as a JSON number, rounded half-even to 3 decimals
    (units, not money: a number reads better in charts, and 3 decimals is all a forecast
    knows).

    >>> units_number("12.34567"), units_number("0"), units_number("2.0005")
    (12.346, 0.0, 2.0)
    """
    try:
        value = Decimal(str(text)).quantize(UNITS_STEP, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        raise InvariantViolation(f"customer_forecasts.daily_units holds {text!r}") from None
    check(value.is_finite(), f"customer_forecasts.daily_units holds {text!r}")
    return float(value)


def forecast_public(row: CustomerForecast) -> ForecastPublic:
    units = list(row.daily_units)
    check(
        len(units) == FORECAST_DAYS,
        f"forecast of {row.customer_id!r} has {len(units)} days, not {FORECAST_DAYS}",
    )
    topup = row.recommended_topup_micros
    return ForecastPublic(
        customer_id=row.customer_id,
        currency=row.currency,
        daily_units=[units_number(u) for u in units],
        depletion_at=row.depletion_at,
        recommended_topup=format_micros(topup) if topup is not None else None,
        recommended_topup_micros=topup,
        balance_micros=row.balance_micros,
        days_learned=row.days_learned,
        updated_at=row.updated_at,
    )


async def forecast(runtime: ApiRuntime, principal: Principal, customer_id: str) -> ForecastPublic:
    """The customer's forecast; before the agent wrote one: seven zeros and nulls (and the
    live balance), so clients need no special case for a new customer."""
    await runtime.control.require_customer(principal, customer_id)
    async with runtime.control.sessions() as session:
        row = await session.get(CustomerForecast, customer_id)
        tenant = await session.get(Tenant, customer_id) if row is None else None
    if row is not None:
        return forecast_public(row)
    if tenant is None or tenant.kind != "customer":
        raise NotFound(f"customer {customer_id!r} not found")
    live = runtime.sink.view.balance(customer_id)
    return ForecastPublic(
        customer_id=customer_id,
        currency=tenant.currency,
        daily_units=[0.0] * FORECAST_DAYS,
        depletion_at=None,
        recommended_topup=None,
        recommended_topup_micros=None,
        balance_micros=live.balance_micros if live is not None else 0,
        days_learned=0,
        updated_at=None,
    )


def score_public(row: FraudScoreRow) -> FraudScorePublic:
    def rounded(value: Decimal) -> float:
        # a JSON number like the topic's (exact: 4 decimals fit a double's shortest repr)
        return float(round(value, SCORE_DECIMALS))

    return FraudScorePublic(
        score_id=row.score_id,
        customer_id=row.customer_id,
        reseller_id=row.reseller_id,
        source=row.source,
        event_id=row.event_id,
        kind=row.kind,
        score=rounded(row.score),
        unsupervised=rounded(row.unsupervised),
        supervised=rounded(row.supervised) if row.supervised is not None else None,
        threshold=rounded(row.threshold),
        suspected=row.suspected,
        occurred_at=row.occurred_at,
        scored_at=row.scored_at,
    )


async def customer_scores(
    runtime: ApiRuntime, principal: Principal, customer_id: str, limit: int
) -> FraudScoreList:
    """The customer's scores, newest event first (as fresh as the sink's last flush)."""
    await runtime.control.require_customer(principal, customer_id)
    require_fraud_staff(principal)
    rows = await runtime.clickhouse.run(fraud_scores.customer_scores, customer_id, limit)
    if not rows and await runtime.control.customer_owner(customer_id) is None:
        # the admin sees every id: one that neither the control plane nor the scores know is
        # missing, as it is for everyone else
        raise NotFound(f"customer {customer_id!r} not found")
    return FraudScoreList(items=[score_public(r) for r in rows])


async def suspected(
    runtime: ApiRuntime, principal: Principal, reseller_id: str | None, limit: int
) -> FraudScoreList:
    """Suspected events, newest first: the admin's of everyone (or of ``reseller_id``); a
    reseller's of its own customers (another reseller's id: 404)."""
    if principal.is_admin:
        scope = reseller_id
    elif principal.role == "reseller" and principal.reseller_scope is not None:
        scope = principal.reseller_scope
        if reseller_id is not None and reseller_id != scope:
            raise NotFound(f"reseller {reseller_id!r} not found")
    else:
        raise Forbidden("only the admin or a reseller reads suspected events")
    if scope is not None:
        await visible_reseller(runtime.control, principal, scope)
    rows = await runtime.clickhouse.run(fraud_scores.suspected_scores, scope, limit)
    return FraudScoreList(items=[score_public(r) for r in rows])

"""GraphQL at ``/graphql`` (strawberry): the same operations and scope rules as REST.

Queries: ``tenant(id)``, ``customers(first, after, resellerId, status)``,
``balance(customerId)``, ``transactions(customerId, limit, beforeSeq)``,
``commissions(resellerId, month)`` (with ``entries(limit, afterPosition)``),
``statements(resellerId, first, after)``, ``statement(resellerId, month)``,
``payouts(resellerId, first, after)`` (api/graphql_commissions.py), ``forecast(customerId)``,
``fraudScores(customerId, limit)`` (api/graphql_ml.py). Mutations:
``processUsage(customerId, meter, quantity, eventId, occurredAt)`` and
``createTopup(customerId, amount, savePaymentMethod, idempotencyKey)`` (Stripe Checkout).
Every resolver calls the function its REST route calls, with the request's principal, so an
object outside the scope is a ``NOT_FOUND`` error here exactly where REST answers 404. Errors
carry the stable code in ``extensions.code``. Money: decimal strings, and micros as
``Micros`` (a 64-bit integer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import strawberry
from graphql import GraphQLError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from streambill.api import reads
from streambill.api.graphql_base import MAX_PAGE, MICROS_SCALAR, Context, Micros, call, context, ctx
from streambill.api.graphql_commissions import CommissionQueries
from streambill.api.graphql_ml import MlQueries
from streambill.api.routes.usage import accept_usage
from streambill.api.schemas import LedgerEntryPublic
from streambill.control import tenants
from streambill.control.schemas import TenantPublic, TopupCreate, TopupPublic
from streambill.errors import NotFound
from streambill.payments import checkout


@strawberry.type
class Price:
    meter: str
    unit_price: str


@strawberry.type
class AutoTopup:
    enabled: bool
    threshold: str
    amount: str


@strawberry.type
class Tenant:
    id: str
    kind: str
    reseller_id: str | None
    name: str
    currency: str
    status: str
    prices: list[Price]
    auto_topup: AutoTopup | None
    timezone: str
    brand_name: str | None
    logo_url: str | None
    color_primary: str | None
    color_accent: str | None
    slug: str | None
    custom_domain: str | None
    fraud_threshold: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def of(t: TenantPublic) -> Tenant:
        auto = t.auto_topup
        return Tenant(
            id=t.id,
            kind=t.kind,
            reseller_id=t.reseller_id,
            name=t.name,
            currency=t.currency,
            status=t.status,
            prices=[Price(meter=p.meter, unit_price=str(p.unit_price)) for p in t.prices],
            auto_topup=(
                AutoTopup(
                    enabled=auto.enabled, threshold=str(auto.threshold), amount=str(auto.amount)
                )
                if auto
                else None
            ),
            timezone=t.timezone,
            brand_name=t.brand_name,
            logo_url=t.logo_url,
            color_primary=t.color_primary,
            color_accent=t.color_accent,
            slug=t.slug,
            custom_domain=t.custom_domain,
            fraud_threshold=t.fraud_threshold,
            version=t.version,
            created_at=t.created_at,
            updated_at=t.updated_at,
        )


@strawberry.type
class CustomerPage:
    items: list[Tenant]
    next_cursor: str | None


@strawberry.type
class Balance:
    customer_id: str
    currency: str
    balance: str
    balance_micros: Micros
    seq: int
    updated_at: datetime


@strawberry.type
class Transaction:
    entry_id: str
    source_event_id: str
    customer_id: str
    reseller_id: str | None
    kind: str
    meter: str | None
    quantity: str | None
    amount_micros: Micros
    balance_micros: Micros
    currency: str
    seq: int
    occurred_at: datetime
    applied_at: datetime

    @staticmethod
    def of(e: LedgerEntryPublic) -> Transaction:
        return Transaction(**e.model_dump(exclude={"source_topic"}))


@strawberry.type
class Topup:
    id: str
    customer_id: str
    kind: str
    status: str
    amount: str
    amount_micros: Micros
    currency: str
    checkout_url: str | None
    checkout_session_id: str | None
    expires_at: datetime | None
    created_at: datetime

    @staticmethod
    def of(t: TopupPublic) -> Topup:
        return Topup(
            id=t.id,
            customer_id=t.customer_id,
            kind=t.kind,
            status=t.status,
            amount=t.amount,
            amount_micros=Micros(t.amount_micros),
            currency=t.currency,
            checkout_url=t.checkout_url,
            checkout_session_id=t.checkout_session_id,
            expires_at=t.expires_at,
            created_at=t.created_at,
        )


@strawberry.type
class UsageResult:
    accepted: bool
    event_id: str
    customer_id: str


@strawberry.type
class Query(CommissionQueries, MlQueries):
    @strawberry.field(description="A reseller or customer in scope; NOT_FOUND otherwise.")
    async def tenant(self, info: Info[Context, Any], id: str) -> Tenant:
        here = ctx(info)

        async def find() -> TenantPublic:
            try:
                return await tenants.get_tenant(
                    here.runtime.control, here.principal, "customer", id
                )
            except NotFound:
                return await tenants.get_tenant(
                    here.runtime.control, here.principal, "reseller", id
                )

        try:
            return Tenant.of(await call(find))
        except GraphQLError:
            raise GraphQLError(
                f"tenant {id!r} not found", extensions={"code": "NOT_FOUND"}
            ) from None

    @strawberry.field(description="Customers in scope, ordered by id.")
    async def customers(
        self,
        info: Info[Context, Any],
        first: int = 100,
        after: str | None = None,
        reseller_id: str | None = None,
        status: str | None = None,
    ) -> CustomerPage:
        here = ctx(info)
        if not 1 <= first <= MAX_PAGE:
            raise GraphQLError(
                f"first must be 1..{MAX_PAGE}", extensions={"code": "INVALID_REQUEST"}
            )
        if status not in (None, "active", "suspended", "closed"):
            raise GraphQLError("unknown status", extensions={"code": "INVALID_REQUEST"})
        page = await call(
            lambda: tenants.list_tenants(
                here.runtime.control,
                here.principal,
                "customer",
                limit=first,
                cursor=after,
                reseller_id=reseller_id,
                status=status,
            )
        )
        return CustomerPage(items=[Tenant.of(t) for t in page.items], next_cursor=page.next_cursor)

    @strawberry.field(description="A customer's live balance.")
    async def balance(self, info: Info[Context, Any], customer_id: str) -> Balance:
        here = ctx(info)
        found = await call(lambda: reads.balance(here.runtime, here.principal, customer_id))
        return Balance(**found.model_dump())

    @strawberry.field(description="A customer's ledger entries, newest first.")
    async def transactions(
        self,
        info: Info[Context, Any],
        customer_id: str,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[Transaction]:
        here = ctx(info)
        if not 1 <= limit <= MAX_PAGE:
            raise GraphQLError(
                f"limit must be 1..{MAX_PAGE}", extensions={"code": "INVALID_REQUEST"}
            )
        page = await call(
            lambda: reads.ledger(here.runtime, here.principal, customer_id, limit, before_seq)
        )
        return [Transaction.of(e) for e in page.entries]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Post one usage event; true once the broker has it.")
    async def process_usage(
        self,
        info: Info[Context, Any],
        customer_id: str,
        meter: str,
        quantity: str,
        event_id: str,
        occurred_at: datetime | None = None,
    ) -> UsageResult:
        here = ctx(info)
        event: dict[str, Any] = {
            "event_id": event_id,
            "customer_id": customer_id,
            "meter": meter,
            "quantity": quantity,
        }
        if occurred_at is not None:
            event["occurred_at"] = occurred_at.isoformat()
        parsed = await call(lambda: accept_usage(here.runtime, here.principal, orjson.dumps(event)))
        if parsed.rejected:
            first = parsed.rejected[0]
            raise GraphQLError(first.message, extensions={"code": first.code.upper()})
        return UsageResult(accepted=True, event_id=event_id, customer_id=customer_id)

    @strawberry.mutation(description="Start a Stripe Checkout top-up; pay at checkoutUrl.")
    async def create_topup(
        self,
        info: Info[Context, Any],
        customer_id: str,
        amount: str,
        save_payment_method: bool = False,
        idempotency_key: str | None = None,
    ) -> Topup:
        here = ctx(info)
        try:
            body = TopupCreate(amount=amount, save_payment_method=save_payment_method)
        except ValueError as exc:
            raise GraphQLError(
                f"amount must be a decimal like 20.00: {exc}",
                extensions={"code": "INVALID_REQUEST"},
            ) from None
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            raise GraphQLError(
                "idempotencyKey is 1..128 characters", extensions={"code": "INVALID_REQUEST"}
            )
        result, _ = await call(
            lambda: checkout.create_topup(
                here.runtime.payments(), here.principal, customer_id, body, idempotency_key
            )
        )
        return Topup.of(result)


schema = strawberry.Schema(
    query=Query, mutation=Mutation, config=StrawberryConfig(scalar_map={Micros: MICROS_SCALAR})
)


def graphql_router() -> GraphQLRouter[Context, None]:
    # No GET queries: a mutation must never ride on a link; the IDE stays off in production
    # paths (the OpenAPI docs describe REST; the schema is introspectable).
    return GraphQLRouter(
        schema,
        path="/graphql",
        context_getter=context,
        allow_queries_via_get=False,
        graphql_ide=None,
        tags=["graphql"],
    )

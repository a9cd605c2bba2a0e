"""A reseller's commission plan: read it (the admin or the reseller itself) and replace it (the
admin), through the same path as every tenant change: the row, ``version`` + 1, the
``billing.accounts.v1`` message in the outbox and an audit record in one transaction, so the
worker's commissions agent gets the plan with the account.

A stored plan is ``plan_document(plan)`` (decimal strings, no floats); null means the default
plan in the reseller's currency and time zone.
"""

from __future__ import annotations

from typing import Any, Final

from streambill.control.models import Tenant
from streambill.control.outbox import enqueue_account
from streambill.control.plane import ControlPlane, audit
from streambill.control.principal import Principal
from streambill.domain.commissions import InvalidPlan, Plan, plan_document, plan_from_document
from streambill.errors import Conflict, Forbidden, InvalidEvent, NotFound

PLAN_FIELDS: Final = frozenset(plan_document(Plan(currency="EUR")))


def effective_plan(tenant: Tenant) -> Plan:
    """The plan that applies to a reseller: its own, or the defaults in its currency and
    time zone."""
    return plan_from_document(tenant.commission_plan, tenant.currency, tenant.timezone)


def sees_reseller(p: Principal, reseller_id: str) -> bool:
    """The admin, or the reseller itself (its reseller keys and users; not a service key)."""
    return p.sees_money_of(reseller_id)


async def visible_reseller(cp: ControlPlane, p: Principal, reseller_id: str) -> Tenant:
    """The reseller row if ``p`` may read its commission data; 404 otherwise (also for an id
    that is a customer's, so a foreign object and a missing one answer alike)."""
    if not sees_reseller(p, reseller_id):
        raise NotFound(f"reseller {reseller_id!r} not found")
    async with cp.sessions() as session:
        tenant = await session.get(Tenant, reseller_id)
    if tenant is None or tenant.kind != "reseller":
        raise NotFound(f"reseller {reseller_id!r} not found")
    return tenant


async def get_plan(cp: ControlPlane, p: Principal, reseller_id: str) -> dict[str, Any]:
    tenant = await visible_reseller(cp, p, reseller_id)
    return plan_document(effective_plan(tenant))


def parse_plan(doc: dict[str, Any], currency: str, timezone: str) -> Plan:
    """A plan document checked field by field; code ``invalid_plan`` for anything else."""
    unknown = sorted(set(doc) - PLAN_FIELDS)
    if unknown:
        raise InvalidEvent(f"unknown plan field(s): {', '.join(unknown)}", code="invalid_plan")
    try:
        return plan_from_document(doc, currency, timezone)
    except InvalidPlan as exc:
        raise InvalidEvent(str(exc), code="invalid_plan") from None


async def put_plan(
    cp: ControlPlane, p: Principal, reseller_id: str, doc: dict[str, Any]
) -> dict[str, Any]:
    """Replace the reseller's plan (the admin only). Answers the stored document."""
    if not p.is_admin:
        raise Forbidden("only the platform admin sets commission plans")
    now = cp.clock()
    async with cp.sessions.begin() as session:
        tenant = await session.get(Tenant, reseller_id, with_for_update=True)
        if tenant is None or tenant.kind != "reseller":
            raise NotFound(f"reseller {reseller_id!r} not found")
        if tenant.status == "closed":
            raise Conflict(f"reseller {reseller_id!r} is closed")
        stored = plan_document(parse_plan(doc, tenant.currency, tenant.timezone))
        tenant.commission_plan = stored
        tenant.version += 1
        tenant.updated_at = now
        await session.flush()
        enqueue_account(session, tenant, now)
        audit(session, now, p, "reseller.commission_plan", tenant.id, {"plan": stored})
    cp.on_outbox()
    return stored

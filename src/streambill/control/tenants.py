"""Resellers and customers: create, read, list, update. Every change is one transaction with
its outbox message (``billing.accounts.v1``) and its audit record.

Who may do what (anything outside a principal's scope answers 404, see :mod:`.principal`):
- resellers: the admin creates them and changes their status; a reseller edits its own name,
  time zone, branding, payout details and fraud alert threshold.
- customers: the admin or the owning reseller creates and edits them (prices, status, auto
  top-up); a customer changes its own auto top-up and low-balance threshold only.
- a closed account stays closed (its ledger stays; its keys and sessions stop working).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Select, false, select
from sqlalchemy.exc import IntegrityError

from streambill.control.models import Tenant
from streambill.control.outbox import enqueue_account
from streambill.control.plane import ControlPlane, audit, page_by_id
from streambill.control.principal import Principal
from streambill.control.schemas import (
    CustomerCreate,
    CustomerUpdate,
    Page,
    ResellerCreate,
    ResellerUpdate,
    TenantPublic,
)
from streambill.control.security import new_id
from streambill.errors import Conflict, Forbidden, NotFound

Kind = Literal["reseller", "customer"]
_RESELLER_SELF_FIELDS = frozenset(
    {
        "name",
        "timezone",
        "brand_name",
        "logo_url",
        "color_primary",
        "color_accent",
        "slug",
        # not custom_domain: the admin sets it once the reseller has shown it owns the domain
        # (a reseller naming any host would have the api dress it in its brand)
        "payout_holder",
        "payout_iban",
        "payout_bic",
        "payout_email",
        # its own fraud alert threshold (a stricter or looser eye on its own customers)
        "fraud_threshold",
    }
)
_CUSTOMER_SELF_FIELDS = frozenset({"auto_topup", "low_balance_threshold"})


def public(tenant: Tenant) -> TenantPublic:
    saved = tenant.payment_method_id is not None
    return TenantPublic.model_validate(
        {
            **{c: getattr(tenant, c) for c in TenantPublic.model_fields if hasattr(tenant, c)},
            "reseller_id": tenant.parent_id,
            # the label only: the Stripe ids stay inside streambill
            "payment_method": (
                {"label": tenant.payment_method_label or "saved payment method"} if saved else None
            ),
        }
    )


def _prices(body_prices: list[Any]) -> list[dict[str, str]]:
    return [{"meter": p.meter, "unit_price": str(p.unit_price)} for p in body_prices]


async def create_reseller(cp: ControlPlane, p: Principal, body: ResellerCreate) -> TenantPublic:
    if not p.is_admin:
        raise Forbidden("only the platform admin creates resellers")
    now = cp.clock()
    fields = body.model_dump(exclude={"id"})
    tenant = Tenant(
        id=body.id or new_id("res"),
        kind="reseller",
        parent_id=None,
        status="active",
        prices=[],
        auto_topup=None,
        version=1,
        created_at=now,
        updated_at=now,
        **fields,
    )
    await _insert(cp, p, tenant, "reseller.create")
    return public(tenant)


async def create_customer(cp: ControlPlane, p: Principal, body: CustomerCreate) -> TenantPublic:
    reseller_id = body.reseller_id
    if p.role == "reseller":
        if reseller_id is not None and reseller_id != p.tenant_id:
            raise NotFound(f"reseller {reseller_id!r} not found")
        reseller_id = p.tenant_id
    elif not p.is_admin:
        raise Forbidden("only the admin or a reseller creates customers")
    now = cp.clock()
    async with cp.sessions.begin() as session:
        if reseller_id is not None:
            parent = await session.get(Tenant, reseller_id)
            if parent is None or parent.kind != "reseller":
                raise NotFound(f"reseller {reseller_id!r} not found")
            if parent.status != "active":
                raise Conflict(f"reseller {reseller_id!r} is {parent.status}")
    tenant = Tenant(
        id=body.id or new_id("cus"),
        kind="customer",
        parent_id=reseller_id,
        name=body.name,
        currency=body.currency,
        status="active",
        prices=_prices(body.prices),
        auto_topup=body.auto_topup.model_dump(mode="json") if body.auto_topup else None,
        low_balance_threshold=(
            str(body.low_balance_threshold) if body.low_balance_threshold is not None else None
        ),
        timezone="Europe/Berlin",
        version=1,
        created_at=now,
        updated_at=now,
    )
    await _insert(cp, p, tenant, "customer.create")
    cp.remember_owner(tenant.id, tenant.parent_id)
    return public(tenant)


async def _insert(cp: ControlPlane, p: Principal, tenant: Tenant, action: str) -> None:
    try:
        async with cp.sessions.begin() as session:
            if await session.get(Tenant, tenant.id) is not None:
                raise Conflict(f"id {tenant.id!r} is taken")
            session.add(tenant)
            await session.flush()
            enqueue_account(session, tenant, tenant.updated_at)
            audit(session, tenant.updated_at, p, action, tenant.id, {"name": tenant.name})
    except IntegrityError as exc:
        raise Conflict(_integrity_message(exc)) from None
    cp.on_outbox()


def _integrity_message(exc: IntegrityError) -> str:
    text = str(exc.orig).lower()
    for column in ("slug", "custom_domain"):
        if column in text:
            return f"{column} is taken by another reseller"
    return "the id, slug or domain is taken"


async def get_tenant(cp: ControlPlane, p: Principal, kind: Kind, tenant_id: str) -> TenantPublic:
    async with cp.sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    _require_visible(p, tenant, kind, tenant_id)
    assert tenant is not None  # for mypy: _require_visible raised otherwise
    return public(tenant)


def _require_visible(p: Principal, tenant: Tenant | None, kind: Kind, tenant_id: str) -> None:
    if (
        tenant is None
        or tenant.kind != kind
        or not p.sees_tenant(tenant.id, kind, tenant.parent_id)
    ):
        raise NotFound(f"{kind} {tenant_id!r} not found")


async def list_tenants(
    cp: ControlPlane,
    p: Principal,
    kind: Kind,
    *,
    limit: int,
    cursor: str | None,
    reseller_id: str | None = None,
    status: str | None = None,
) -> Page[TenantPublic]:
    query: Select[Tenant] = select(Tenant).where(Tenant.kind == kind)
    query = _scope(query, p, kind)
    if reseller_id is not None:
        query = query.where(Tenant.parent_id == reseller_id)
    if status is not None:
        query = query.where(Tenant.status == status)
    return await page_by_id(cp, query, Tenant.id, limit, cursor, public)


def _scope(query: Select[Tenant], p: Principal, kind: Kind) -> Select[Tenant]:
    if p.is_admin:
        return query
    if kind == "reseller":
        return (
            query.where(Tenant.id == p.reseller_scope) if p.reseller_scope else query.where(false())
        )
    if p.customer_scope is not None:
        return query.where(Tenant.id == p.customer_scope)
    return (
        query.where(Tenant.parent_id == p.reseller_scope)
        if p.reseller_scope
        else query.where(false())
    )


async def update_tenant(
    cp: ControlPlane,
    p: Principal,
    kind: Kind,
    tenant_id: str,
    body: ResellerUpdate | CustomerUpdate,
) -> TenantPublic:
    changes = body.model_dump(exclude_unset=True)
    now = cp.clock()
    async with cp.sessions.begin() as session:
        tenant = await session.get(Tenant, tenant_id, with_for_update=True)
        _require_visible(p, tenant, kind, tenant_id)
        assert tenant is not None
        _check_may_update(p, tenant, changes)
        if tenant.status == "closed":
            raise Conflict(f"{kind} {tenant_id!r} is closed")
        if not changes:
            return public(tenant)
        for name, value in _column_values(body, changes).items():
            setattr(tenant, name, value)
        tenant.version += 1
        tenant.updated_at = now
        try:
            await session.flush()
        except IntegrityError as exc:
            raise Conflict(_integrity_message(exc)) from None
        enqueue_account(session, tenant, now)
        audit(session, now, p, f"{kind}.update", tenant.id, _audit_details(changes))
        result = public(tenant)
    cp.on_outbox()
    if "status" in changes and changes["status"] != "active":
        cp.auth.forget_tenant(tenant_id)
    return result


def _check_may_update(p: Principal, tenant: Tenant, changes: dict[str, Any]) -> None:
    if p.is_admin:
        return
    if tenant.kind == "reseller":
        allowed = _RESELLER_SELF_FIELDS if p.role == "reseller" else frozenset()
    elif p.role == "reseller":
        allowed = frozenset(changes)  # its own customer: everything
    elif p.role == "customer":
        allowed = _CUSTOMER_SELF_FIELDS
    else:
        allowed = frozenset()
    denied = sorted(set(changes) - allowed)
    if denied or not allowed:
        raise Forbidden(f"{p.role} may not change {', '.join(denied) or 'this account'}")


def _column_values(
    body: ResellerUpdate | CustomerUpdate, changes: dict[str, Any]
) -> dict[str, Any]:
    values = dict(changes)
    if isinstance(body, CustomerUpdate):
        if "prices" in changes and body.prices is not None:
            values["prices"] = _prices(body.prices)
        if "prices" in changes and body.prices is None:
            values["prices"] = []
        if "auto_topup" in changes:
            values["auto_topup"] = (
                body.auto_topup.model_dump(mode="json") if body.auto_topup else None
            )
        if "low_balance_threshold" in changes:
            low = body.low_balance_threshold
            values["low_balance_threshold"] = str(low) if low is not None else None
    return values


def _audit_details(changes: dict[str, Any]) -> dict[str, Any]:
    """What changed, without payout account numbers in the clear."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("payout_iban", "payout_bic") and value:
            out[name] = f"…{str(value)[-4:]}"
        else:
            out[name] = value if isinstance(value, str | int | bool | type(None)) else str(value)
    return out

"""``ControlPlane``: what the control-plane operations share (database, clock, relay, caches).

The operations live in modules by resource (:mod:`.tenants`, :mod:`.identity`,
:mod:`.adjustments`); each takes the plane and the :class:`Principal` and applies the scope
rules itself, so REST, GraphQL and WebSockets cannot disagree about who sees what.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from streambill.control.access import Authenticator
from streambill.control.models import AuditRecord, Tenant
from streambill.control.principal import Principal
from streambill.control.schemas import Page
from streambill.errors import InvalidEvent, NotFound

R = TypeVar("R", bound=Any)
P = TypeVar("P")
OWNER_CACHE_MAX: Final = 1_000_000
MISSING_TTL_S: Final = 2.0


@dataclass
class ControlPlane:
    sessions: async_sessionmaker[SqlSession]
    auth: Authenticator
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Called after a commit that wrote outbox rows (wakes the relay).
    on_outbox: Callable[[], None] = lambda: None
    # customer id -> its reseller (or "" for a direct customer); a customer's reseller never
    # changes, so entries stay valid; unknown ids are remembered briefly (they may appear).
    _owners: dict[str, str] = field(default_factory=dict)
    _missing: dict[str, float] = field(default_factory=dict)

    def remember_owner(self, customer_id: str, reseller_id: str | None) -> None:
        if len(self._owners) >= OWNER_CACHE_MAX:
            self._owners.clear()
        self._owners[customer_id] = reseller_id or ""
        self._missing.pop(customer_id, None)

    async def customer_owner(self, customer_id: str) -> str | None:
        """The customer's reseller id ("" for a direct customer), or None when no such
        customer exists. Cached: ingest asks this for every event."""
        owner = self._owners.get(customer_id)
        if owner is not None:
            return owner
        missing_until = self._missing.get(customer_id)
        if missing_until is not None and missing_until > time.monotonic():
            return None
        async with self.sessions() as session:
            tenant = await session.get(Tenant, customer_id)
        if tenant is None or tenant.kind != "customer":
            if len(self._missing) > 100_000:
                self._missing.clear()
            self._missing[customer_id] = time.monotonic() + MISSING_TTL_S
            return None
        self.remember_owner(tenant.id, tenant.parent_id)
        return tenant.parent_id or ""

    async def sees_customer(self, principal: Principal, customer_id: str) -> bool:
        """Scope check by id. The admin sees every customer, also ones that exist only in
        the ledger (written to the accounts topic by another tool)."""
        if principal.is_admin:
            return True
        if principal.customer_scope is not None:
            return principal.customer_scope == customer_id
        owner = await self.customer_owner(customer_id)
        if owner is None:
            return False
        return principal.sees_customer(customer_id, owner or None)

    async def require_customer(self, principal: Principal, customer_id: str) -> None:
        if not await self.sees_customer(principal, customer_id):
            raise NotFound(f"customer {customer_id!r} not found")


async def visible_customer(session: SqlSession, p: Principal, customer_id: str) -> Tenant:
    """The customer row, if the principal may see it; 404 otherwise (also for a reseller's
    id, so a foreign object and a missing one answer alike)."""
    tenant = await session.get(Tenant, customer_id)
    if (
        tenant is None
        or tenant.kind != "customer"
        or not p.sees_customer(tenant.id, tenant.parent_id)
    ):
        raise NotFound(f"customer {customer_id!r} not found")
    return tenant


def audit(
    session: SqlSession,
    now: datetime,
    principal: Principal,
    action: str,
    target: str,
    details: dict[str, object] | None = None,
) -> None:
    session.add(
        AuditRecord(
            at=now, actor=principal.label(), action=action, target=target, details=details or {}
        )
    )


async def page_by_id(
    cp: ControlPlane,
    query: Select[R],
    id_column: InstrumentedAttribute[str],
    limit: int,
    cursor: str | None,
    public: Callable[[R], P],
) -> Page[P]:
    """One page of ``query`` in id order after ``cursor`` (keyset pagination: stable while
    rows are added, no offset scans)."""
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(id_column > after)
    async with cp.sessions() as session:
        rows = (await session.scalars(query.order_by(id_column).limit(limit + 1))).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return Page[P](items=[public(r) for r in rows[:limit]], next_cursor=next_cursor)


def encode_cursor(last_id: str) -> str:
    """An opaque cursor for keyset pagination by id.

    >>> decode_cursor(encode_cursor("cus_42"))
    'cus_42'
    """
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent(
            "cursor is not one this api handed out", code="invalid_request"
        ) from None

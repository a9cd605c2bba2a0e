"""Automatic suspension of a customer the fraud agent suspects (``FRAUD_AUTO_SUSPEND=1``).

The same change an operator makes with ``PATCH /v2/customers/{id} {"status": "suspended"}``:
the tenant row, its version, an audit record naming the alert, and the outbox row that takes
the account to the accounts topic (the balances agent then refuses the customer's usage and
the api its keys), all in one transaction. Only an active customer is suspended; reactivating
one is left to a person.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import Tenant
from streambill.control.outbox import enqueue_account
from streambill.control.plane import audit
from streambill.control.principal import Principal

FRAUD_AGENT: Final = Principal(
    role="admin", tenant_id=None, tenant_kind=None, credential_id="agent:fraud"
)


async def suspend_for_fraud(
    sessions: async_sessionmaker[SqlSession], customer_id: str, alert_id: str, now: datetime
) -> bool:
    """Suspend the customer if it is active; True when this call suspended it."""
    async with sessions.begin() as session:
        tenant = await session.get(Tenant, customer_id, with_for_update=True)
        if tenant is None or tenant.kind != "customer" or tenant.status != "active":
            return False
        tenant.status = "suspended"
        tenant.version += 1
        tenant.updated_at = now
        await session.flush()
        enqueue_account(session, tenant, now)
        audit(
            session,
            now,
            FRAUD_AGENT,
            "customer.update",
            tenant.id,
            {"status": "suspended", "reason": "fraud_suspected", "alert_id": alert_id},
        )
    return True

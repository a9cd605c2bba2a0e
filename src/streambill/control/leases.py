"""Named leases in the control-plane database: one holder at a time, taken over on expiry.

The outbox relay and the Stripe reconciler run on every api replica but act on one: each
round takes or renews its lease first and does nothing without it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import Lease

log = logging.getLogger(__name__)


async def acquire(
    sessions: async_sessionmaker[SqlSession], name: str, holder: str, ttl_s: float, now: datetime
) -> bool:
    """Take the lease (free or expired) or renew it (ours); False while another holds it."""
    expires = now + timedelta(seconds=ttl_s)
    async with sessions.begin() as session:
        lease = await session.get(Lease, name, with_for_update=True)
        if lease is None:
            session.add(Lease(name=name, holder=holder, expires_at=expires))
            return True
        if lease.holder != holder and lease.expires_at > now:
            return False
        lease.holder = holder
        lease.expires_at = expires
        return True


async def release(sessions: async_sessionmaker[SqlSession], name: str, holder: str) -> None:
    """Give the lease up if we hold it (best effort: it expires by itself otherwise)."""
    try:
        async with sessions.begin() as session:
            await session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
    except Exception:
        log.warning("could not release the %s lease; it expires by itself", name, exc_info=True)

"""Authentication: API keys, users, sessions, and the token -> principal cache.

Every request presents a token (an API key, a session token, or the platform admin's key from
settings). Looking a digest up costs a database round trip, so resolved principals are cached
for ``CACHE_TTL_S``: a key revoked through another api replica stops working within that time
(and open WebSockets re-check on the same clock, so they close within a minute); a key revoked
through this process stops at once.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.control.models import ApiKey, AuthSession, Tenant, User
from streambill.control.principal import Principal, Role, TenantKind
from streambill.control.security import digest

CACHE_TTL_S: Final = 20.0
NEGATIVE_TTL_S: Final = 2.0
CACHE_MAX: Final = 50_000
LAST_USED_EVERY: Final = timedelta(minutes=1)
SESSION_LIFETIME: Final = timedelta(hours=12)
ADMIN_CREDENTIAL: Final = "admin"
# The bootstrap admin key (``STREAMBILL_ADMIN_API_KEY`` or the data dir's ``admin_api_key``)
# is retired by revoking this id (``DELETE /v2/api-keys/key_bootstrap``): a row with it,
# revoked, turns the key away in every replica within the cache's lifetime.
BOOTSTRAP_KEY_ID: Final = "key_bootstrap"


class Authenticator:
    """``await authenticate(token)`` -> :class:`Principal` or None (unknown, revoked, expired)."""

    def __init__(
        self,
        sessions: async_sessionmaker[SqlSession],
        admin_key: str | None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._admin_key = admin_key.encode() if admin_key else None
        self._clock = clock
        self._monotonic = monotonic
        # digest -> (principal or None, valid until (monotonic), expires_at of a session)
        self._cache: OrderedDict[str, tuple[Principal | None, float, datetime | None]] = (
            OrderedDict()
        )
        self._retired: tuple[bool, float] | None = None  # bootstrap key retired, valid until

    async def authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > 512:
            return None
        if self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key):
            if await self._bootstrap_retired():
                return None
            return Principal("admin", None, None, ADMIN_CREDENTIAL)
        key = digest(token)
        now_m = self._monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now_m and (hit[2] is None or hit[2] > self._clock()):
            return hit[0]
        principal, expires_at = await self._lookup(key)
        ttl = CACHE_TTL_S if principal is not None else NEGATIVE_TTL_S
        self._cache[key] = (principal, now_m + ttl, expires_at)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return principal

    async def _bootstrap_retired(self) -> bool:
        now_m = self._monotonic()
        if self._retired is not None and self._retired[1] > now_m:
            return self._retired[0]
        async with self._sessions() as session:
            revoked = await session.scalar(
                select(ApiKey.revoked_at).where(ApiKey.id == BOOTSTRAP_KEY_ID)
            )
        retired = revoked is not None
        self._retired = (retired, now_m + CACHE_TTL_S)
        return retired

    def forget(self, credential_id: str) -> None:
        """Drop cached principals of a revoked key or session (this process only)."""
        stale = [
            k for k, (p, _, _) in self._cache.items() if p and p.credential_id == credential_id
        ]
        for k in stale:
            del self._cache[k]
        if credential_id in (BOOTSTRAP_KEY_ID, ADMIN_CREDENTIAL):
            self._retired = None

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop cached principals bound to a tenant (it was suspended or closed)."""
        stale = [k for k, (p, _, _) in self._cache.items() if p and p.tenant_id == tenant_id]
        for k in stale:
            del self._cache[k]

    async def _lookup(self, key_digest: str) -> tuple[Principal | None, datetime | None]:
        now = self._clock()
        async with self._sessions() as session:
            api_key = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_digest))
            if api_key is not None:
                return await self._key_principal(session, api_key, now), None
            found = await session.execute(
                select(AuthSession, User)
                .join(User, User.id == AuthSession.user_id)
                .where(AuthSession.token_hash == key_digest)
            )
            row = found.first()
            if row is None:
                return None, None
            auth_session, user = row.tuple()
            if auth_session.revoked_at is not None or auth_session.expires_at <= now:
                return None, None
            if user.disabled_at is not None:
                return None, None
            kind = await _tenant_kind(session, user.tenant_id)
            if user.tenant_id is not None and kind is None:
                return None, None
            role: Role = user.role  # type: ignore[assignment]
            principal = Principal(role, user.tenant_id, kind, auth_session.id, user.id)
            return principal, auth_session.expires_at

    async def _key_principal(
        self, session: SqlSession, api_key: ApiKey, now: datetime
    ) -> Principal | None:
        if api_key.revoked_at is not None:
            return None
        kind = await _tenant_kind(session, api_key.tenant_id)
        if api_key.tenant_id is not None and kind is None:
            return None
        if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_EVERY:
            await session.execute(
                update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now)
            )
            await session.commit()
        role: Role = api_key.role  # type: ignore[assignment]
        return Principal(role, api_key.tenant_id, kind, api_key.id)


async def _tenant_kind(session: SqlSession, tenant_id: str | None) -> TenantKind | None:
    """The kind of an active tenant; None if it is missing or closed (its keys stop working).

    A suspended tenant keeps read access (it must still see its balance to top up)."""
    if tenant_id is None:
        return None
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None or tenant.status == "closed":
        return None
    return tenant.kind  # type: ignore[return-value]

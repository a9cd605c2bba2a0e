"""API keys, users and sessions.

Keys: the admin issues any; a reseller issues keys for itself (reseller, service) and for its
customers (customer, service); a customer issues its own (customer, service); a service key
issues none. Revoking follows the same scope. Users follow the same tree (the admin creates
admins). The secret of a key or session is returned once and stored only as a digest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, false, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from streambill.control.access import BOOTSTRAP_KEY_ID, SESSION_LIFETIME
from streambill.control.models import ApiKey, AuthSession, Tenant, User
from streambill.control.plane import ControlPlane, audit, page_by_id
from streambill.control.principal import Principal
from streambill.control.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    LoginResponse,
    Page,
    UserCreate,
    UserPublic,
)
from streambill.control.security import (
    digest,
    display_prefix,
    hash_password_off_loop,
    new_api_key,
    new_id,
    new_session_token,
    verify_password_off_loop,
)
from streambill.errors import Conflict, Forbidden, NotFound, Unauthorized

C = TypeVar("C", ApiKey, User)
# role of the new credential -> tenant kinds it may be bound to
_BINDINGS: dict[str, frozenset[str]] = {
    "admin": frozenset(),
    "reseller": frozenset({"reseller"}),
    "customer": frozenset({"customer"}),
    "service": frozenset({"reseller", "customer"}),
}


def key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(key, from_attributes=True)


def user_public(user: User) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


async def _binding_tenant(
    cp: ControlPlane, p: Principal, role: str, tenant_id: str | None
) -> Tenant | None:
    """The tenant a new key or user is bound to, after the scope and role checks."""
    if p.role == "service":
        raise Forbidden("a service key cannot issue credentials")
    if role == "admin":
        if not p.is_admin:
            raise Forbidden("only the admin creates admin credentials")
        if tenant_id is not None:
            raise Conflict("admin credentials are not bound to a tenant")
        return None
    if tenant_id is None:
        if p.tenant_id is None:
            raise Conflict(f"a {role} credential needs a tenant_id")
        tenant_id = p.tenant_id
    async with cp.sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    if tenant is None or not p.sees_tenant(tenant.id, tenant.kind, tenant.parent_id):  # type: ignore[arg-type]
        raise NotFound(f"tenant {tenant_id!r} not found")
    if tenant.kind not in _BINDINGS[role]:
        raise Conflict(f"a {role} credential cannot be bound to a {tenant.kind}")
    if p.role == "customer" and role not in ("customer", "service"):
        raise Forbidden(f"a customer cannot create {role} credentials")
    if tenant.status == "closed":
        raise Conflict(f"tenant {tenant_id!r} is closed")
    return tenant


async def create_key(cp: ControlPlane, p: Principal, body: ApiKeyCreate) -> ApiKeyCreated:
    tenant = await _binding_tenant(cp, p, body.role, body.tenant_id)
    secret = new_api_key(body.role)
    now = cp.clock()
    key = ApiKey(
        id=new_id("key"),
        role=body.role,
        tenant_id=tenant.id if tenant else None,
        name=body.name,
        display_prefix=display_prefix(secret),
        key_hash=digest(secret),
        created_by=p.label(),
        created_at=now,
        last_used_at=None,
        revoked_at=None,
    )
    async with cp.sessions.begin() as session:
        session.add(key)
        audit(
            session, now, p, "api_key.create", key.id, {"role": key.role, "tenant": key.tenant_id}
        )
    return ApiKeyCreated(**key_public(key).model_dump(), key=secret)


def _credential_scope(
    query: Select[C], tenant_column: InstrumentedAttribute[str | None], p: Principal
) -> Select[C]:
    """Keys and users in scope: the admin all; a reseller those of itself and its customers; a
    customer its own; a service key none (it reads balances, not credentials)."""
    if p.is_admin:
        return query
    if p.role == "service":
        return query.where(false())
    if p.reseller_scope is not None:
        owned = select(Tenant.id).where(Tenant.parent_id == p.reseller_scope)
        return query.where(or_(tenant_column == p.reseller_scope, tenant_column.in_(owned)))
    return query.where(tenant_column == p.tenant_id)


def _key_scope(query: Select[ApiKey], p: Principal) -> Select[ApiKey]:
    return _credential_scope(query, ApiKey.tenant_id, p)


async def list_keys(
    cp: ControlPlane,
    p: Principal,
    *,
    limit: int,
    cursor: str | None,
    tenant_id: str | None = None,
    include_revoked: bool = False,
) -> Page[ApiKeyPublic]:
    query = _key_scope(select(ApiKey), p)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return await page_by_id(cp, query, ApiKey.id, limit, cursor, key_public)


async def revoke_key(cp: ControlPlane, p: Principal, key_id: str) -> ApiKeyPublic:
    if key_id == BOOTSTRAP_KEY_ID:
        return await retire_bootstrap_key(cp, p)
    now = cp.clock()
    async with cp.sessions.begin() as session:
        key = await session.scalar(_key_scope(select(ApiKey), p).where(ApiKey.id == key_id))
        if key is None:
            raise NotFound(f"api key {key_id!r} not found")
        if key.revoked_at is None:
            key.revoked_at = now
            audit(session, now, p, "api_key.revoke", key.id)
        result = key_public(key)
    cp.auth.forget(key_id)
    return result


async def retire_bootstrap_key(cp: ControlPlane, p: Principal) -> ApiKeyPublic:
    """Turn the bootstrap admin key away for good. Refused while no other way in exists
    (an active admin key of its own or an admin user), so the platform cannot be locked out.
    """
    if not p.is_admin:
        raise NotFound(f"api key {BOOTSTRAP_KEY_ID!r} not found")
    now = cp.clock()
    async with cp.sessions.begin() as session:
        row = await session.get(ApiKey, BOOTSTRAP_KEY_ID, with_for_update=True)
        if row is None:
            others = await session.scalar(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
            )
            users = await session.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == "admin", User.disabled_at.is_(None))
            )
            if not others and not users:
                raise Conflict(
                    "issue an admin key (POST /v2/api-keys, role admin) or an admin user "
                    "before the bootstrap key is retired"
                )
            row = ApiKey(
                id=BOOTSTRAP_KEY_ID,
                role="admin",
                tenant_id=None,
                name="bootstrap (STREAMBILL_ADMIN_API_KEY)",
                display_prefix="sb_admin_…",
                key_hash=digest(new_api_key("admin")),  # a marker: matches no key
                created_by=p.label(),
                created_at=now,
                last_used_at=None,
                revoked_at=now,
            )
            session.add(row)
            audit(session, now, p, "api_key.retire_bootstrap", BOOTSTRAP_KEY_ID)
        result = key_public(row)
    cp.auth.forget(BOOTSTRAP_KEY_ID)
    return result


def _user_scope(query: Select[User], p: Principal) -> Select[User]:
    return _credential_scope(query, User.tenant_id, p)


async def create_user(cp: ControlPlane, p: Principal, body: UserCreate) -> UserPublic:
    tenant = await _binding_tenant(cp, p, body.role, body.tenant_id)
    now = cp.clock()
    user = User(
        id=new_id("usr"),
        email=body.email.lower(),
        password_hash=await hash_password_off_loop(body.password),
        role=body.role,
        tenant_id=tenant.id if tenant else None,
        name=body.name,
        disabled_at=None,
        created_at=now,
    )
    try:
        async with cp.sessions.begin() as session:
            if await session.scalar(select(User.id).where(User.email == user.email)):
                raise Conflict("a user with this e-mail exists")
            session.add(user)
            audit(
                session,
                now,
                p,
                "user.create",
                user.id,
                {"role": user.role, "tenant": user.tenant_id},
            )
    except IntegrityError:
        raise Conflict("a user with this e-mail exists") from None
    return user_public(user)


async def get_user(cp: ControlPlane, p: Principal, user_id: str) -> UserPublic:
    async with cp.sessions() as session:
        user = await session.scalar(_user_scope(select(User), p).where(User.id == user_id))
    if user is None:
        raise NotFound(f"user {user_id!r} not found")
    return user_public(user)


async def list_users(
    cp: ControlPlane, p: Principal, *, limit: int, cursor: str | None, tenant_id: str | None = None
) -> Page[UserPublic]:
    query = _user_scope(select(User), p)
    if tenant_id is not None:
        query = query.where(User.tenant_id == tenant_id)
    return await page_by_id(cp, query, User.id, limit, cursor, user_public)


async def login(
    cp: ControlPlane,
    email: str,
    password: str,
    admit: Callable[[User, Tenant | None], None] | None = None,
) -> LoginResponse:
    """A new session for a valid e-mail and password; the same error for every failure.

    ``admit`` (the dashboards: is this account one of this portal's?) runs only after the
    password is verified and raises to refuse; no session is created then."""
    async with cp.sessions() as session:
        user = await session.scalar(select(User).where(User.email == email.strip().lower()))
        tenant = await session.get(Tenant, user.tenant_id) if user and user.tenant_id else None
    ok = await verify_password_off_loop(user.password_hash if user else None, password)
    if (
        not ok
        or user is None
        or user.disabled_at is not None
        or (tenant is not None and tenant.status == "closed")
    ):
        raise Unauthorized("e-mail or password is wrong")
    if admit is not None:
        admit(user, tenant)
    token = new_session_token()
    now = cp.clock()
    expires_at: datetime = now + SESSION_LIFETIME
    async with cp.sessions.begin() as session:
        session.add(
            AuthSession(
                id=new_id("ses"),
                token_hash=digest(token),
                user_id=user.id,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
            )
        )
    return LoginResponse(token=token, expires_at=expires_at, user=user_public(user))


async def logout(cp: ControlPlane, p: Principal) -> None:
    """End the session that authenticated ``p`` (an API key is revoked, not logged out)."""
    if p.user_id is None:
        raise Conflict("logout ends a session; revoke an API key with DELETE /v2/api-keys/{id}")
    async with cp.sessions.begin() as session:
        found = await session.get(AuthSession, p.credential_id)
        if found is not None and found.revoked_at is None:
            found.revoked_at = cp.clock()
    cp.auth.forget(p.credential_id)

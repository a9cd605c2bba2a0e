"""API keys: issued for a tenant in scope, shown once, stored as a digest, revocable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.control import identity
from streambill.control.access import ADMIN_CREDENTIAL, BOOTSTRAP_KEY_ID
from streambill.control.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, Page

router = APIRouter(prefix="/v2/api-keys", tags=["api keys"])
KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=ANY_ID_PATTERN)]


@router.post("", response_model=ApiKeyCreated, status_code=201)
async def create_key(
    body: ApiKeyCreate, runtime: Runtime, principal: CurrentPrincipal
) -> ApiKeyCreated:
    """Issue a key. ``key`` is in this response only; keep it, it cannot be shown again."""
    return await identity.create_key(runtime.control, principal, body)


@router.get("", response_model=Page[ApiKeyPublic])
async def list_keys(
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
    tenant_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
    include_revoked: bool = False,
) -> Page[ApiKeyPublic]:
    """Keys in scope (never their secrets), ordered by id."""
    return await identity.list_keys(
        runtime.control,
        principal,
        limit=limit,
        cursor=cursor,
        tenant_id=tenant_id,
        include_revoked=include_revoked,
    )


@router.delete("/{key_id}", response_model=ApiKeyPublic)
async def revoke_key(key_id: KeyId, runtime: Runtime, principal: CurrentPrincipal) -> ApiKeyPublic:
    """Revoke a key: at once in this api, within 20 s in other replicas; open WebSockets
    that used it close within a minute. ``key_bootstrap`` retires the bootstrap admin key
    (``STREAMBILL_ADMIN_API_KEY``), once another admin key or admin user exists."""
    result = await identity.revoke_key(runtime.control, principal, key_id)
    await runtime.close_credential(ADMIN_CREDENTIAL if key_id == BOOTSTRAP_KEY_ID else key_id)
    return result

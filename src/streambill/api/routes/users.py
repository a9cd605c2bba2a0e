"""Users of the dashboards: created within the caller's scope; passwords stored as argon2id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from streambill.api.deps import CurrentPrincipal, Runtime
from streambill.api.params import ANY_ID_PATTERN, Cursor
from streambill.control import identity
from streambill.control.schemas import Page, UserCreate, UserPublic

router = APIRouter(prefix="/v2/users", tags=["users"])


@router.post("", response_model=UserPublic, status_code=201)
async def create_user(
    body: UserCreate, runtime: Runtime, principal: CurrentPrincipal
) -> UserPublic:
    return await identity.create_user(runtime.control, principal, body)


@router.get("", response_model=Page[UserPublic])
async def list_users(
    runtime: Runtime,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
    tenant_id: Annotated[str | None, Query(max_length=128, pattern=ANY_ID_PATTERN)] = None,
) -> Page[UserPublic]:
    return await identity.list_users(
        runtime.control, principal, limit=limit, cursor=cursor, tenant_id=tenant_id
    )


@router.get("/{user_id}", response_model=UserPublic)
async def get_user(
    user_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ANY_ID_PATTERN)],
    runtime: Runtime,
    principal: CurrentPrincipal,
) -> UserPublic:
    return await identity.get_user(runtime.control, principal, user_id)

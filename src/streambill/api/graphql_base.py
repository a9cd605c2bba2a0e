"""What every GraphQL module shares: the context, error mapping, the Micros scalar."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NewType, TypeVar

import strawberry
from fastapi import Depends, Request
from graphql import GraphQLError
from strawberry.fastapi import BaseContext
from strawberry.types import Info

from streambill.api.deps import ApiRuntime, get_principal, get_runtime
from streambill.control.principal import Principal
from streambill.errors import StreambillError

T = TypeVar("T")
MAX_PAGE = 1000

Micros = NewType("Micros", int)
MICROS_SCALAR = strawberry.scalar(
    name="Micros",
    serialize=int,
    parse_value=int,
    description="An amount in micros (1 unit = 1,000,000): a 64-bit integer.",
)


class Context(BaseContext):
    def __init__(self, runtime: ApiRuntime, principal: Principal) -> None:
        super().__init__()
        self.runtime = runtime
        self.principal = principal


async def context(
    request: Request,
    runtime: ApiRuntime = Depends(get_runtime),  # noqa: B008 (FastAPI's dependency style)
) -> Context:
    principal = await get_principal(request, runtime)
    return Context(runtime, principal)


async def call(action: Callable[[], Awaitable[T]]) -> T:
    try:
        return await action()
    except StreambillError as exc:
        raise GraphQLError(exc.message, extensions={"code": exc.code.upper()}) from None


def ctx(info: Info[Context, Any]) -> Context:
    return info.context

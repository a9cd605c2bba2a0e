"""Query and path parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from streambill.control.schemas import ANY_ID_PATTERN

Cursor = Annotated[
    str | None,
    Query(
        max_length=256,
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="The next_cursor of the previous page.",
    ),
]

__all__ = ["ANY_ID_PATTERN", "Cursor"]

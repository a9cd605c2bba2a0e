"""Reference exchange rates (the platform admin only): set them as JSON, import the ECB's
eurofxref XML or a ``date,currency,rate`` CSV, list them. Rates are units per euro."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request

from streambill.api.deps import AdminPrincipal, Runtime
from streambill.api.params import Cursor
from streambill.commissions.schemas import (
    RatePage,
    RatePublic,
    RatesImported,
    RatesPut,
)
from streambill.control import rates
from streambill.control.plane import decode_cursor, encode_cursor
from streambill.domain.fx import parse_csv, parse_ecb_xml
from streambill.errors import InvalidEvent

router = APIRouter(prefix="/v2/exchange-rates", tags=["exchange rates"])
XML_TYPES: Final = frozenset({"application/xml", "text/xml"})
CSV_TYPES: Final = frozenset({"text/csv"})
Day = Annotated[date | None, Query()]


def _imported(result: rates.ImportResult) -> RatesImported:
    return RatesImported(
        received=result.received,
        stored=result.stored,
        unchanged=result.unchanged,
        skipped=result.skipped,
        skipped_currencies=result.skipped_currencies,
    )


@router.put("", response_model=RatesImported)
async def put_rates(body: RatesPut, runtime: Runtime, principal: AdminPrincipal) -> RatesImported:
    """Insert or replace rates by (day, currency). Currencies streambill does not bill in are
    skipped and counted; a bad day or rate refuses the whole request (422 ``invalid_rates``)."""
    rows = rates.parse_rows([(r.day, r.currency, r.rate) for r in body.rates])
    return _imported(await rates.upsert_rates(runtime.control, principal, rows, "api"))


@router.post(
    "/import",
    response_model=RatesImported,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/xml": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_rates(
    request: Request, runtime: Runtime, principal: AdminPrincipal
) -> RatesImported:
    """The body is the ECB's ``eurofxref-daily.xml`` / ``-hist.xml`` (``application/xml`` or
    ``text/xml``) or CSV ``date,currency,rate`` with an optional header (``text/csv``)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in XML_TYPES | CSV_TYPES:
        raise InvalidEvent(
            "Content-Type must be application/xml, text/xml or text/csv",
            code="unsupported_media_type",
        )
    body = await request.body()
    if media_type in XML_TYPES:
        rows, source = parse_ecb_xml(body), "ecb"
    else:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidEvent("the CSV is not UTF-8", code="invalid_rates") from None
        rows, source = parse_csv(text), "csv"
    return _imported(await rates.upsert_rates(runtime.control, principal, rows, source))


@router.get("", response_model=RatePage)
async def list_rates(
    runtime: Runtime,
    principal: AdminPrincipal,
    day_from: Annotated[date | None, Query(alias="from", description="First day (incl.).")] = None,
    day_to: Annotated[date | None, Query(alias="to", description="Last day (incl.).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Cursor = None,
) -> RatePage:
    """Rates by day, then currency."""
    after = None
    decoded = decode_cursor(cursor)
    if decoded is not None:
        day, _, currency = decoded.partition("|")
        after = (day, currency)
    rows = await rates.list_rates(runtime.control, principal, day_from, day_to, limit + 1, after)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(f"{last.day}|{last.currency}")
    return RatePage(
        items=[RatePublic.model_validate(r, from_attributes=True) for r in rows[:limit]],
        next_cursor=next_cursor,
    )

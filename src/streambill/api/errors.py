"""Errors -> HTTP: one table from stable codes to status; one JSON shape for every error.

Body: ``{"error": {"code": "...", "message": "..."}}`` (CONTRACT section 5).
"""

from __future__ import annotations

import logging
from typing import Final

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from streambill.errors import RateLimited, StreambillError

log = logging.getLogger(__name__)

# What the database driver raises when the control database cannot be reached or is gone
# mid-request (connection refused, reset, pool timeout; SQLite locked or unopenable).
DATABASE_DOWN: Final = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
)
# pydantic error types raised by streambill's own validators, answered as the error code.
OWN_VALIDATION_CODES: Final = frozenset({"invalid_money_amount"})
STATUS_BY_CODE: Final[dict[str, int]] = {
    "invalid_money_amount": 422,
    "control_db_unavailable": 503,
    "return_url_not_allowed": 422,
    "invalid_json": 400,
    "invalid_signature": 400,
    "invalid_event": 422,
    "invalid_request": 422,
    "unknown_meter": 422,
    "currency_mismatch": 422,
    "amount_out_of_range": 422,
    "invalid_payment_method": 422,
    "too_many_events": 413,
    "payload_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_customer": 404,
    "conflict": 409,
    "rate_limited": 429,
    "unavailable": 503,
    "clickhouse_unavailable": 503,
    "broker_unavailable": 503,
    "payment_provider_error": 502,
    "payment_provider_unavailable": 503,
    "invalid_plan": 422,
    "invalid_rates": 422,
    "no_exchange_rate": 422,
    "sepa_file_invalid": 422,
    "unsupported_media_type": 415,
    "month_not_closable": 409,
    "sepa_not_configured": 409,
    "payout_run_in_progress": 409,
    "range_too_large": 422,
    "not_replayable": 409,
    "already_replayed": 409,
    "wrong_portal": 403,
}
_HTTP_CODES: Final[dict[int, str]] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(StreambillError)
    async def _domain(request: Request, exc: StreambillError) -> JSONResponse:
        status = STATUS_BY_CODE.get(exc.code, 500)
        if status >= 500:
            log.warning("request failed: %s %s: %s", request.method, request.url.path, exc)
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after_s)}
        if exc.code == "unauthorized":
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # The control database is down or unreachable: the request may succeed later.
        log.warning(
            "control database unavailable: %s %s: %s", request.method, request.url.path, exc
        )
        return JSONResponse(
            error_body("control_db_unavailable", "the control database is unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    # Handlers of these classes answer inside the app (a handler for ``Exception`` answers
    # from the outermost middleware, which re-raises and makes the server drop the
    # connection).
    for kind in DATABASE_DOWN:
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: logged with its traceback; the client gets the usual shape, never a trace.
        log.exception("unhandled error: %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_body("invalid_json", "the body is not valid JSON"), status_code=400
            )
        # A validation with a code of its own (money fields: ``invalid_money_amount``) keeps it.
        kind = str(first.get("type", ""))
        code = kind if kind in OWN_VALIDATION_CODES else "invalid_request"
        return JSONResponse(
            error_body(code, f"{where}: {first.get('msg')}"),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

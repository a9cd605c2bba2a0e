"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/")
async def index() -> dict[str, str]:
    """Where to go from here."""
    return {
        "name": "streambill",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz",
        "metrics": "/metrics",
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when migrations ran and the ClickHouse sink is consuming."""
    runtime = getattr(request.app.state, "runtime", None)
    sink_running = bool(runtime is not None and runtime.sink.running)
    body = {
        "ready": sink_running,
        "sink": "running" if sink_running else "stopped",
        "sink_error": runtime.sink.last_error if runtime is not None else None,
        "customers": len(runtime.sink.view) if runtime is not None else 0,
    }
    return JSONResponse(body, status_code=200 if sink_running else 503)


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

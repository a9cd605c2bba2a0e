"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/", response_model=None)
async def index(request: Request) -> dict[str, str] | Response:
    """Where to go from here: a browser goes to the customer portal (its sign-in page when
    signed out); an API client gets the links below."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/portal", status_code=303)
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
    """Ready when migrations ran and the sink, the live feed and the producer run (and the
    outbox relay, where this api runs one)."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"ready": False, "starting": True}, status_code=503)
    relay_needed = runtime.settings.outbox_relay
    parts = {
        "sink": runtime.sink.running,
        "live_feed": runtime.feed.running,
        "producer": runtime.producer.running,
        "outbox_relay": runtime.relay.running or not relay_needed,
    }
    ready = all(parts.values())
    body = {
        "ready": ready,
        **{name: "running" if up else "stopped" for name, up in parts.items()},
        "sink_error": runtime.sink.last_error,
        "outbox_error": runtime.relay.last_error,
        "customers": len(runtime.sink.view),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

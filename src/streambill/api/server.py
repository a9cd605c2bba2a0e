"""``streambill api``: the FastAPI app under uvicorn; stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from streambill.api.app import create_app
from streambill.gctune import apply_gc_threshold
from streambill.settings import Settings
from streambill.stack import resolve_admin_key


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_api(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    apply_gc_threshold(settings.gc_gen0_threshold)
    if settings.admin_api_key is None:
        # Run alone: the key that `up` generated (or a new one) in the data dir, never logged.
        key = resolve_admin_key(settings, settings.data_dir)
        settings = settings.model_copy(update={"admin_api_key": key})
        logging.getLogger(__name__).info(
            "admin key read from %s", settings.data_dir / "admin_api_key"
        )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=20,
        # Live messages are encoded once and sent to many sockets; per-message deflate would
        # compress each copy again (~25% more CPU per message, measured).
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT (lifespan: the sink flushes and
    # commits, chDB closes), then raises the signal again under the handlers it found: with
    # the defaults the process died of it (exit -15 in `up`'s log) after a clean stop. Found
    # these instead, that re-raise is a normal exit, as is a signal before uvicorn listens.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_normally)
    server.run()
    return 0 if server.started else 1

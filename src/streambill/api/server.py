"""``streambill api``: the FastAPI app under uvicorn; stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging

import uvicorn

from streambill.api.app import create_app
from streambill.settings import Settings


def run_api(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=20,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1

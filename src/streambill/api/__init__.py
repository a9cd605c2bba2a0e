"""The api process: REST v2, health and metrics, the ClickHouse sink and the live ledger view.

- :mod:`streambill.api.app` -- ``create_app(settings)`` with its lifespan (migrations, sink).
- :mod:`streambill.api.errors` -- the one table from error codes to HTTP status.
- :mod:`streambill.api.deps` -- ``Annotated`` dependencies (``AdminKey``, ``Runtime``).
- :mod:`streambill.api.routes` -- one router per resource.
- :mod:`streambill.api.server` -- ``streambill api`` under uvicorn.
"""

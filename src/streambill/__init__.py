"""streambill: a streaming, real-time prepaid billing engine.

Services post usage events to Kafka or over HTTP; the ``balances`` Faust agent rates each
event, debits the customer's prepaid balance and emits one ledger entry per applied event;
the api process keeps the ledger and analytics in ClickHouse and serves balances.

Packages:

- :mod:`streambill.domain` -- pure money, rating and balance logic (no I/O).
- :mod:`streambill.streams` -- topics, event schemas and serialization (no I/O).
- :mod:`streambill.agents` -- the Faust app and its agents (one per module).
- :mod:`streambill.analytics` -- ClickHouse schema migrations, the sink and queries.
- :mod:`streambill.broker` -- the embedded Kafka-compatible broker and topic admin.
- :mod:`streambill.api` -- the FastAPI application.
"""

__version__ = "0.1.0"

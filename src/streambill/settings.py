"""One frozen settings object, built in each entry point and passed in.

Every variable has the prefix ``STREAMBILL_`` (CONTRACT section 2). Defaults describe the
embedded stack; production points the same names at Kafka, a ClickHouse server and
PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SINK_MIN_FETCH_WAIT_MS = 200


class Settings(BaseSettings):
    """Process settings. Build one with :func:`load_settings` in an entry point."""

    model_config = SettingsConfigDict(env_prefix="STREAMBILL_", frozen=True, extra="ignore")

    data_dir: Path = Path("./.streambill")
    kafka_bootstrap: str | None = None
    broker_port: int = 9092
    # durable: Tansu in memory behind the journal proxy, which syncs every acknowledged write
    # to <data_dir>/broker-journal and replays it at start (broker/proxy.py); s3: Tansu's own
    # engine on localbucket (every write kept, slow reads); memory: nothing kept.
    broker_storage: Literal["durable", "memory", "s3"] = "durable"
    # durable: how long the journal keeps records of topics without their own retention.ms
    # (compacted topics keep each key's latest record), and how much journal is written
    # between two compactions (broker/compaction.py).
    broker_retention_hours: float = Field(default=24.0, gt=0)
    broker_compact_mib: float = Field(default=256.0, gt=0)
    # durable: the proxy moves the records to a fresh (compacted) data Tansu once a partition
    # got this many record batches, or at a compaction: Tansu's memory and read cost (which
    # grows with a partition's batches) then follow retention, not age.
    broker_rotate_batches: int = Field(default=2_000, ge=10)
    topic_partitions: int = Field(default=8, ge=1, le=256)
    clickhouse_url: str | None = None
    database_url: str | None = None
    api_host: str = "127.0.0.1"
    # Where the worker's and the ml process's web ports (health, readiness, metrics) listen:
    # loopback unless an orchestrator's probes and scrapers need them, behind its network
    # policies (docs/deploy.md). They answer nothing a client needs.
    internal_host: str = "127.0.0.1"
    api_port: int = 8000
    # The worker's own HTTP port (/healthz, /readyz, /metrics); `up` gives worker i port + i.
    worker_port: int = 6066
    # /healthz, /readyz and /metrics of `streambill ml` (the online-ML agents).
    ml_port: int = 6065
    # The embedded S3 store (localbucket) behind the durable broker; 0 picks a free port.
    bucket_port: int = 0
    admin_api_key: str | None = None
    demo: bool = False
    # The demo's sign-in password for its dashboard users (`up` generates one per data dir);
    # unset: the demo creates no users.
    demo_password: str | None = Field(default=None, min_length=12, max_length=128)
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    # One Stripe call's timeout; a call that runs out is looked up before it is retried.
    stripe_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Where customers reach the api from outside (links in alerts, Checkout return pages);
    # unset: http://API_HOST:API_PORT.
    public_url: str | None = None
    # Auto top-up (the worker's agent; needs STRIPE_API_KEY). Cooldown between two
    # attempts of one customer, attempts per customer per UTC day, the first backoff after a
    # decline (doubling with each further one), and how many declines in a row turn it off.
    autotopup: bool = True
    autotopup_cooldown_s: float = Field(default=60.0, ge=0)
    autotopup_daily_max: int = Field(default=5, ge=1, le=100)
    autotopup_backoff_s: float = Field(default=900.0, ge=0)
    autotopup_max_failures: int = Field(default=3, ge=1, le=20)
    # The reconciler (api, lease-holding replica): how often it lists Stripe's recent events
    # and how far back. The lookback stays inside the balances agent's dedup window.
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    reconcile_lookback_s: int = Field(default=3 * 24 * 3600, ge=60, le=7 * 24 * 3600)
    # Reseller commissions: the worker's agent (accrual), how long after a month ends (in
    # the reseller's time zone) it is closed automatically, the smallest payout (smaller
    # amounts carry forward), and the platform's account that pays resellers by SEPA.
    commissions: bool = True
    commission_checkpoint_ms: int = Field(default=1000, ge=10, le=60_000)
    commission_close_grace_s: int = Field(default=3 * 24 * 3600, ge=0)
    payout_minimum: str = "50.00"
    # Online ML (streambill ml, online_ml/): fraud scores of every usage and payment event,
    # usage forecasts. FRAUD_THRESHOLD is the score above which a fraud_suspected alert goes
    # out (a reseller may set its own); FRAUD_AUTO_SUSPEND suspends the customer as well.
    # FORECAST_HORIZON_H: a predicted_depletion alert when the balance is forecast to run out
    # sooner. Model state is checkpointed every ML_CHECKPOINT_MS.
    ml: bool = True
    fraud_threshold: str = Field(default="0.95", pattern=r"^(0(\.\d{1,4})?|1(\.0{1,4})?)$")
    fraud_auto_suspend: bool = False
    forecast_horizon_h: int = Field(default=72, ge=1, le=24 * 30)
    ml_checkpoint_ms: int = Field(default=10_000, ge=100, le=600_000)
    sepa_debtor_name: str = "streambill platform"
    sepa_debtor_iban: str | None = None
    sepa_debtor_bic: str | None = None
    # Python's cyclic GC runs a young-generation pass every this many allocations in the
    # worker and the api (CPython's default is 700); 0 keeps the interpreter's default.
    gc_gen0_threshold: int = Field(default=50_000, ge=0, le=10_000_000)
    # The worker caps glibc's malloc arenas at this many (0 keeps glibc's eight per core):
    # each thread's own arena keeps its freed buffers (streambill/malloc.py).
    malloc_arena_max: int = Field(default=2, ge=0, le=64)
    # Worker tuning. The batch bounds how many events one table update covers.
    # 5,000 measured best in the full bench (docs/performance.md step 12): 2,000 paid three
    # broker round trips per 2,000 events; 10,000 pushed the RSS over 500 MB.
    worker_batch_max: int = Field(default=5000, ge=1, le=100_000)
    worker_batch_wait_ms: int = Field(default=20, ge=1, le=5_000)
    # Batch publishes in flight at once (each waits for the one before it): with 1 the loop
    # waits for the last round trip of a batch before it computes the next. 2 measured +4%
    # events/s and +30 MB worker RSS (docs/performance.md step 16), so 1 is the default.
    worker_publish_depth: int = Field(default=1, ge=1, le=8)
    # Hand consumed messages to the streams without Faust's four tasks per message when the
    # hand-off does not suspend (agents/fastdrain.py).
    worker_fast_drain: bool = True
    # Read the balances agent's usage and payments with librdkafka in whole batches instead
    # of through Faust's stream (agents/source.py); off: Faust's stream and take_events.
    worker_direct_source: bool = True
    # Usage for an account the worker has not seen yet waits this long before dead-lettering.
    unknown_customer_retry_s: float = Field(default=90.0, ge=0)
    # Producer duplicates of an event_id are ignored for at least this long.
    dedup_window_s: int = Field(default=8 * 24 * 3600, ge=7 * 24 * 3600)
    # Payments' dedup records are kept this long (payments are few); a payment older than
    # this less an hour is dead-lettered as ``stale_payment``, never applied (docs/contract.md).
    payment_dedup_window_s: int = Field(default=400 * 24 * 3600, ge=8 * 24 * 3600)
    # Kafka session timeout; short so that group joins on the embedded broker take seconds.
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    # Idempotent producers. The embedded broker (Tansu 0.6) on its s3 storage engine failed
    # an idempotent producer with OUT_OF_ORDER_SEQUENCE_NUMBER (fatal) after seconds of demo
    # traffic, so `up` turns it off for its children on that engine only; they then keep
    # order with one request in flight per broker, which serializes partitions (slow).
    kafka_idempotence: bool = True
    # How long a fetch may wait on the broker for data; unset picks by broker (see below).
    kafka_fetch_max_wait_ms: int | None = Field(default=None, ge=1, le=5000)
    # The ClickHouse sink's fetch wait; unset: the broker's wait, at least 200 ms (below).
    sink_fetch_max_wait_ms: int | None = Field(default=None, ge=1, le=5000)
    # The api. Browser origins allowed to open /v2/stream and to send cookie-authenticated
    # writes (comma-separated); unset: the api's own URL on 127.0.0.1 and localhost.
    allowed_origins: str | None = None
    # Requests per second per API key or session (token bucket), and the burst above it.
    api_rate_limit_per_s: float = Field(default=1000.0, gt=0)
    api_rate_burst: int = Field(default=2000, ge=1)
    # Login attempts (each a ~190 ms argon2id check, off the event loop): per minute per
    # e-mail across addresses (slows password guessing), per minute per client address
    # (a storm from one place), and per second for the whole api process.
    login_attempts_per_min: int = Field(default=10, ge=1)
    login_per_address_per_min: int = Field(default=30, ge=1)
    login_overall_per_s: float = Field(default=5.0, gt=0)
    # Request bodies: POST /v2/usage (up to 1,000 events), everything else.
    api_max_usage_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Publish the control plane's outbox from this api process (off: another replica or a
    # dedicated process relays; the rows wait in the database meanwhile).
    outbox_relay: bool = True
    # The session cookie's Secure flag: on wherever the api is served over https.
    session_cookie_secure: bool = False
    # Dashboards. White-label hosts are ``<reseller slug>.<base domain>`` (or a reseller's
    # custom domain); ``localhost`` works without DNS (browsers resolve *.localhost to the
    # loopback). The language of a first visit (German or English; the visitor can switch).
    dashboard_base_domain: str = Field(default="localhost", min_length=1, max_length=200)
    # The operator's own host names (comma-separated, e.g. "app.example.com"): always the
    # platform's brand, whatever slug or custom domain a reseller holds.
    dashboard_platform_hosts: str | None = None
    dashboard_language: Literal["de", "en"] = "de"
    sink_flush_rows: int = Field(default=1000, ge=1)
    sink_flush_interval_s: float = Field(default=1.0, gt=0)

    @field_validator(
        "kafka_bootstrap",
        "clickhouse_url",
        "database_url",
        "admin_api_key",
        "demo_password",
        "dashboard_platform_hosts",
        "allowed_origins",
        "stripe_api_key",
        "stripe_api_base",
        "public_url",
        "sepa_debtor_iban",
        "sepa_debtor_bic",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def bootstrap(self) -> str:
        """Where Kafka clients connect: the external cluster or the embedded broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def fetch_max_wait_ms(self) -> int:
        """Fetch wait per broker. Tansu answers a fetch only when the wait runs out, not when
        data arrives, so the wait is a floor on each hop's latency; on durable storage a wait
        shorter than one object-store read returns nothing, ever (measured: 20 ms starves,
        50 ms works idle), so durable mode keeps a margin. Kafka wakes a fetch on new data."""
        if self.kafka_fetch_max_wait_ms is not None:
            return self.kafka_fetch_max_wait_ms
        if self.kafka_bootstrap is not None:
            return 500  # an external Kafka; `up` sets the wait for its embedded broker
        return 100 if self.broker_storage == "s3" else 20

    @property
    def sink_fetch_wait_ms(self) -> int:
        """The sink is not on the path of a balance: it flushes once a second and its rows
        feed dashboards. On Tansu every fetch costs the broker CPU whether data came or not
        (a consumer idle on 32 partitions: ~10% of a core at 20 ms, ~1% at 500 ms), CPU the
        worker's hops then wait for; 200 ms keeps the live ledger view fresh within 1 s."""
        if self.sink_fetch_max_wait_ms is not None:
            return self.sink_fetch_max_wait_ms
        return max(self.fetch_max_wait_ms, SINK_MIN_FETCH_WAIT_MS)

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb:///{self.data_dir.resolve() / 'clickhouse'}"

    @property
    def control_db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'control.db'}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def public_base_url(self) -> str:
        return (self.public_url or self.api_url).rstrip("/")

    @property
    def stripe_webhook_secrets(self) -> list[str]:
        """The webhook signing secrets; two, comma-separated, while one is rotated out."""
        raw = self.stripe_webhook_secret or ""
        return [part.strip() for part in raw.split(",") if part.strip()]

    @property
    def origins(self) -> frozenset[str]:
        """Browser origins the api trusts (WebSocket handshakes, cookie-authenticated writes)."""
        if self.allowed_origins:
            return frozenset(
                o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip()
            )
        port = self.api_port
        return frozenset(
            {
                f"http://127.0.0.1:{port}",
                f"http://localhost:{port}",
                f"http://{self.api_host}:{port}",
            }
        )


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides, which win)."""
    return Settings(**overrides)  # type: ignore[arg-type]

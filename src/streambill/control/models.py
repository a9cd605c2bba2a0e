"""The control plane's tables (SQLAlchemy 2.0 declarative, typed).

One ``tenants`` table holds resellers and customers (``kind``): they share the account
fields of ``billing.accounts.v1`` and a customer's ``parent_id`` points at its reseller.
Secrets are never stored: API keys and session tokens as SHA-256 digests (they are random
and long, so a fast digest is enough; what an attacker needs is the token, not the digest),
passwords as argon2id hashes. The schema itself is created by the Alembic migrations in
``control/migrations``; these classes must match them (a test compares).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no zone, so the value is stored as naive
    UTC and read back as UTC (a naive datetime given to us is a bug, and refused).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the control plane")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime()}  # noqa: RUF012 (read by SQLAlchemy)


class Tenant(Base):
    """A reseller or a customer: what the accounts topic carries, plus branding and payouts."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="active")
    # [{"meter": ..., "unit_price": "0.15"}]: decimal strings, never floats.
    prices: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    auto_topup: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    low_balance_threshold: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    brand_name: Mapped[str | None] = mapped_column(String(128))
    logo_url: Mapped[str | None] = mapped_column(String(512))
    color_primary: Mapped[str | None] = mapped_column(String(16))
    color_accent: Mapped[str | None] = mapped_column(String(16))
    slug: Mapped[str | None] = mapped_column(String(63), unique=True)
    custom_domain: Mapped[str | None] = mapped_column(String(253), unique=True)
    payout_holder: Mapped[str | None] = mapped_column(String(140))
    payout_iban: Mapped[str | None] = mapped_column(String(34))
    payout_bic: Mapped[str | None] = mapped_column(String(11))
    payout_email: Mapped[str | None] = mapped_column(String(254))
    # Stripe: the customer object and the payment method saved for auto top-up (ids only;
    # card numbers never reach streambill). ``payment_method_label`` is for display.
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    payment_method_label: Mapped[str | None] = mapped_column(String(128))
    # A reseller's commission plan (domain.commissions.plan_document); null: the defaults.
    commission_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A reseller's fraud alert threshold (a score in [0, 1] as a decimal string); null: the
    # platform's FRAUD_THRESHOLD.
    fraud_threshold: Mapped[str | None] = mapped_column(String(8))
    # Bumped by every change; the accounts topic carries it so consumers can drop stale ones.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_tenants_kind_id", "kind", "id"),)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    # The first characters of the key (kind prefix and a few more): enough to recognise it.
    display_prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuthSession(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class OutboxMessage(Base):
    """A message to publish, written in the transaction of the change it describes.

    The relay publishes in ``id`` order, so messages with one key (an account, a customer's
    payments) reach their partition in the order they were committed.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    topic: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "id"),)


class Adjustment(Base):
    """A manual credit or debit: who, how much, why; the payment event it became."""

    __tablename__ = "adjustments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    amount: Mapped[str] = mapped_column(String(32))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("uq_adjustments_customer_key", "customer_id", "idempotency_key", unique=True),
    )


class AuditRecord(Base):
    """Who changed what, when: every control-plane write leaves one."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Lease(Base):
    """A named lease (the outbox relay's): one api replica relays at a time."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class StripeEvent(Base):
    """A Stripe webhook event taken in: its id is the deduplication key, written in the same
    transaction as the payment events it became (through the outbox)."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    payments: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime]


class MoneyMovement(Base):
    """Every money movement streambill learned of from Stripe, by its payment event id: a
    top-up (the PaymentIntent id), a refund (``re_…``) and its reversal, a chargeback
    (``dp_…``) and its reinstatement. Written in the transaction that puts the payment event
    into the outbox, so an id is sent once however late another announcement of it comes;
    kept for ever (a few hundred bytes per payment). Top-ups are also the index refunds and
    disputes find their customer through (``payment_intent_id``)."""

    __tablename__ = "money_movements"

    event_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class StripeRefund(Base):
    """A refund's state as streambill acted on it: debited once when it is pending or
    succeeded, credited back once when it fails or is canceled after that; a refund seen
    failed or canceled first is never debited."""

    __tablename__ = "stripe_refunds"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    charge_id: Mapped[str | None] = mapped_column(String(255))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    debited_at: Mapped[datetime | None]
    reversed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class StripeDispute(Base):
    """A dispute's state: its funds withdrawn (a chargeback) and reinstated, each once."""

    __tablename__ = "stripe_disputes"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    charge_id: Mapped[str | None] = mapped_column(String(255))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(40))
    withdrawn_at: Mapped[datetime | None]
    reinstated_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class TopupAttempt(Base):
    """One attempt to charge a customer: an auto top-up or a Checkout top-up.

    ``idempotency_key`` is deterministic (``autotopup:<customer>:<number>`` for the auto
    top-up's n-th attempt) and recorded *before* Stripe is called, so a crash or a timeout
    can always be resolved by looking the attempt up at Stripe under that key.
    ``status``: ``pending`` (recorded, call not answered), ``unknown`` (the call failed in
    transit: look it up before anything is retried), ``processing`` (SEPA: Stripe decides
    later), ``succeeded``, ``requires_action``, ``failed``, ``open`` (a Checkout Session
    waiting for the customer), ``expired``.
    """

    __tablename__ = "topup_attempts"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(16))  # auto | checkout
    number: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The ledger entry whose balance crossed the threshold (auto top-ups).
    crossing_seq: Mapped[int | None] = mapped_column(BigInteger)
    crossed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # When Stripe answered with a PaymentIntent, and when its credit reached the ledger.
    intent_at: Mapped[datetime | None]
    emitted_at: Mapped[datetime | None]
    credited_at: Mapped[datetime | None]
    calls: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[datetime | None]
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    action_url: Mapped[str | None] = mapped_column(String(1024))

    __table_args__ = (
        Index(
            "uq_topup_attempts_customer_kind_number", "customer_id", "kind", "number", unique=True
        ),
        Index("ix_topup_attempts_status", "status", "next_check_at"),
    )


class AutoTopupState(Base):
    """Per customer: where its auto top-up stands. Locked (one row) by every decision, so
    at most one attempt is ever in flight, whatever process or replica decides."""

    __tablename__ = "autotopup_states"

    customer_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    # The number the next attempt gets (1, 2, ...): the idempotency key's second half.
    next_number: Mapped[int] = mapped_column(Integer, default=1)
    in_flight: Mapped[str | None] = mapped_column(String(160))
    # Ledger entries at or below this seq were seen by a decision already (stale or
    # duplicated entries cannot trigger another attempt).
    armed_after_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    backoff_until: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    day: Mapped[str | None] = mapped_column(String(10))
    day_count: Mapped[int] = mapped_column(Integer, default=0)
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime]


class StreamOffset(Base):
    """How far a database-backed consumer (the auto top-up and commissions agents) has read a
    partition."""

    __tablename__ = "stream_offsets"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(128), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class ExchangeRate(Base):
    """A reference rate as the ECB publishes them: units of ``currency`` per euro on ``day``."""

    __tablename__ = "exchange_rates"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    rate: Mapped[str] = mapped_column(String(32))  # a decimal string, never a float
    source: Mapped[str] = mapped_column(String(32))  # api | ecb | csv
    updated_at: Mapped[datetime] = mapped_column(index=True)


class CommissionCheckpoint(Base):
    """The commissions agent's state for one partition of its fact topic, and the offset up
    to which that state is complete (agents/commissions.py)."""

    __tablename__ = "commission_checkpoints"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(Text)  # JSON
    updated_at: Mapped[datetime]


class Statement(Base):
    """A reseller's closed commission month: amounts in micros of the reseller's currency.

    One per (reseller, month): the id is ``st_<reseller>_<YYYY-MM>`` and the pair is unique, so
    two concurrent closes store one. ``month_total_micros`` is the month as ClickHouse held it
    at close; ``late_micros`` carries what arrived for earlier closed months after their close
    (``late_lines``: per source month); ``total_micros`` is what the statement pays.
    ``payout_id`` is the payout (pending or paid) that covers it; ``carried_run_id`` the last
    payout run that carried it forward below the minimum (commissions/payouts.py).
    """

    __tablename__ = "statements"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    reseller_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    month: Mapped[str] = mapped_column(String(7))
    # The reseller as it was named at close: documents render from this row alone.
    reseller_name: Mapped[str] = mapped_column(String(256))
    brand_name: Mapped[str | None] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(String(64))
    base_micros: Mapped[int] = mapped_column(BigInteger)
    tier: Mapped[int] = mapped_column(Integer)
    rate: Mapped[str] = mapped_column(String(32))  # a decimal fraction as text: '0.275'
    commission_micros: Mapped[int] = mapped_column(BigInteger)
    bonus_micros: Mapped[int] = mapped_column(BigInteger)
    month_total_micros: Mapped[int] = mapped_column(BigInteger)
    late_micros: Mapped[int] = mapped_column(BigInteger)
    total_micros: Mapped[int] = mapped_column(BigInteger)
    entry_count: Mapped[int] = mapped_column(Integer)
    # [{customer_id, name, base_micros, commission_micros, bonus_micros, total_micros}]
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # [{month, amount_micros}]: late adjustments of earlier closed months carried here
    late_lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    closed_at: Mapped[datetime]
    closed_by: Mapped[str] = mapped_column(String(256))
    payout_id: Mapped[str | None] = mapped_column(String(64), index=True)
    carried_run_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("uq_statements_reseller_month", "reseller_id", "month", unique=True),)


class PayoutRun(Base):
    """One payout run: the payouts it made, the amounts it carried forward (``summary``) and
    the SEPA file it wrote, if any."""

    __tablename__ = "payout_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    minimum: Mapped[str] = mapped_column(String(32))  # settings.payout_minimum at the run
    # {"carried": [{reseller_id, currency, due_micros, reason}]}
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    file_id: Mapped[str | None] = mapped_column(String(64))


class Payout(Base):
    """Money owed to a reseller and sent (``sepa``) or to be sent by hand (``manual``).

    ``amount_micros`` is whole cents: ``statements_micros`` (the statements it covers) plus
    ``carried_in_micros`` (sub-cent remainders of earlier payouts) minus
    ``remainder_micros`` (this payout's own sub-cent remainder, carried to the next).
    ``status``: ``pending`` -> ``paid`` or ``pending`` -> ``failed`` (its statements are
    unpaid again, so the next run retries them)."""

    __tablename__ = "payouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("payout_runs.id"), index=True)
    reseller_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    statements_micros: Mapped[int] = mapped_column(BigInteger)
    carried_in_micros: Mapped[int] = mapped_column(BigInteger)
    remainder_micros: Mapped[int] = mapped_column(BigInteger)
    statement_ids: Mapped[list[str]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(16))  # sepa | manual
    status: Mapped[str] = mapped_column(String(16))  # pending | paid | failed
    # The creditor as it stood at the run (a later edit of the reseller does not change it).
    creditor_name: Mapped[str | None] = mapped_column(String(140))
    creditor_iban: Mapped[str | None] = mapped_column(String(34))
    creditor_bic: Mapped[str | None] = mapped_column(String(11))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]


class PayoutFile(Base):
    """A bank file of a payout run (pain.001.001.03), validated against the XSD before it was
    stored; served byte for byte as stored."""

    __tablename__ = "payout_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("payout_runs.id"), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class ModelCheckpoint(Base):
    """An online-ML agent's state for one partition (pickled models and per-customer
    features) and, per input topic, the offset up to which that state is complete
    (agents/modelstate.py)."""

    __tablename__ = "model_checkpoints"

    agent: Mapped[str] = mapped_column(String(32), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offsets: Mapped[dict[str, int]] = mapped_column(JSON)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    events: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class CustomerForecast(Base):
    """The forecast agent's latest view of a customer: units per day for the next seven days,
    when the balance runs out at that pace, and the top-up it recommends (micros of the
    customer's currency); what ``GET /v2/customers/{id}/forecast`` answers."""

    __tablename__ = "customer_forecasts"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    daily_units: Mapped[list[str]] = mapped_column(JSON)  # seven decimal strings
    balance_micros: Mapped[int] = mapped_column(BigInteger)
    depletion_at: Mapped[datetime | None]
    recommended_topup_micros: Mapped[int | None] = mapped_column(BigInteger)
    days_learned: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class FraudLabel(Base):
    """A manual fraud flag (or all-clear) on a customer, or on one of its events, posted
    through the API; relayed to the fraud agent on ``streambill.fraud-labels.v1``."""

    __tablename__ = "fraud_labels"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), index=True)
    fraud: Mapped[bool] = mapped_column(Boolean)
    event_id: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]


class DeadletterReplay(Base):
    """A dead letter the admin re-produced onto its original topic (``POST
    /v2/admin/deadletters/{id}/replay``): one row per letter, the latest replay's time and
    actor, and how many times it was replayed (a second replay needs ``force``)."""

    __tablename__ = "deadletter_replays"

    id: Mapped[str] = mapped_column(String(400), primary_key=True)  # the letter's public id
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    replays: Mapped[int] = mapped_column(Integer, default=1)
    replayed_at: Mapped[datetime]
    replayed_by: Mapped[str] = mapped_column(String(256))

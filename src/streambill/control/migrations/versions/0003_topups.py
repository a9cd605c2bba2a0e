"""Top-ups: Stripe customer and saved payment method, attempts, auto top-up state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("stripe_customer_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("payment_method_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("payment_method_label", sa.String(length=128), nullable=True))
        batch.create_unique_constraint("uq_tenants_stripe_customer_id", ["stripe_customer_id"])

    op.create_table(
        "topup_attempts",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("crossing_seq", sa.BigInteger(), nullable=True),
        sa.Column("crossed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("intent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("action_url", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("payment_intent_id"),
        sa.UniqueConstraint("checkout_session_id"),
    )
    op.create_index(
        "uq_topup_attempts_customer_kind_number",
        "topup_attempts",
        ["customer_id", "kind", "number"],
        unique=True,
    )
    op.create_index(
        "ix_topup_attempts_status", "topup_attempts", ["status", "next_check_at"], unique=False
    )

    op.create_table(
        "autotopup_states",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("next_number", sa.Integer(), nullable=False),
        sa.Column("in_flight", sa.String(length=160), nullable=True),
        sa.Column("armed_after_seq", sa.BigInteger(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("day", sa.String(length=10), nullable=True),
        sa.Column("day_count", sa.Integer(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(length=200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("customer_id"),
    )

    op.create_table(
        "stream_offsets",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition"),
    )


def downgrade() -> None:
    op.drop_table("stream_offsets")
    op.drop_table("autotopup_states")
    op.drop_index("ix_topup_attempts_status", table_name="topup_attempts")
    op.drop_index("uq_topup_attempts_customer_kind_number", table_name="topup_attempts")
    op.drop_table("topup_attempts")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_constraint("uq_tenants_stripe_customer_id", type_="unique")
        batch.drop_column("payment_method_label")
        batch.drop_column("payment_method_id")
        batch.drop_column("stripe_customer_id")

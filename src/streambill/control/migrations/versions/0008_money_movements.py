"""Money movements learned from Stripe, refunds and disputes: each moves money once, for ever.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "money_movements",
        sa.Column("event_id", sa.String(length=300), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_event_id", sa.String(length=255), nullable=False),
        _when("created_at", False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_money_movements_customer_id", "money_movements", ["customer_id"])
    op.create_index(
        "ix_money_movements_payment_intent_id", "money_movements", ["payment_intent_id"]
    )
    for table, status_len, first, second in (
        ("stripe_refunds", 24, "debited_at", "reversed_at"),
        ("stripe_disputes", 40, "withdrawn_at", "reinstated_at"),
    ):
        op.create_table(
            table,
            sa.Column("id", sa.String(length=255), nullable=False),
            sa.Column("customer_id", sa.String(length=128), nullable=False),
            sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
            sa.Column("charge_id", sa.String(length=255), nullable=True),
            sa.Column("amount_micros", sa.BigInteger(), nullable=False),
            sa.Column("currency", sa.String(length=3), nullable=False),
            sa.Column("status", sa.String(length=status_len), nullable=False),
            _when(first, True),
            _when(second, True),
            _when("updated_at", False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(f"ix_{table}_customer_id", table, ["customer_id"])


def downgrade() -> None:
    for table in ("stripe_disputes", "stripe_refunds"):
        op.drop_index(f"ix_{table}_customer_id", table_name=table)
        op.drop_table(table)
    op.drop_index("ix_money_movements_payment_intent_id", table_name="money_movements")
    op.drop_index("ix_money_movements_customer_id", table_name="money_movements")
    op.drop_table("money_movements")

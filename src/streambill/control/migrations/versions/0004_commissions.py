"""Commissions: per-reseller plans, reference exchange rates, the agent's checkpoints.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("commission_plan", sa.JSON(), nullable=True))

    op.create_table(
        "exchange_rates",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("rate", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", "currency"),
    )
    op.create_index("ix_exchange_rates_updated_at", "exchange_rates", ["updated_at"])

    op.create_table(
        "commission_checkpoints",
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partition"),
    )


def downgrade() -> None:
    op.drop_table("commission_checkpoints")
    op.drop_index("ix_exchange_rates_updated_at", table_name="exchange_rates")
    op.drop_table("exchange_rates")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("commission_plan")

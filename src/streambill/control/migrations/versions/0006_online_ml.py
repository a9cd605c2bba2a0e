"""Online ML: model checkpoints, customer forecasts, fraud labels, resellers' fraud threshold.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("fraud_threshold", sa.String(length=8), nullable=True))

    op.create_table(
        "model_checkpoints",
        sa.Column("agent", sa.String(length=32), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offsets", sa.JSON(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("agent", "partition"),
    )
    op.create_table(
        "customer_forecasts",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("daily_units", sa.JSON(), nullable=False),
        sa.Column("balance_micros", sa.BigInteger(), nullable=False),
        _at("depletion_at", nullable=True),
        sa.Column("recommended_topup_micros", sa.BigInteger(), nullable=True),
        sa.Column("days_learned", sa.Integer(), nullable=False),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "fraud_labels",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("fraud", sa.Boolean(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["customer_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fraud_labels_customer_id", "fraud_labels", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_fraud_labels_customer_id", table_name="fraud_labels")
    op.drop_table("fraud_labels")
    op.drop_table("customer_forecasts")
    op.drop_table("model_checkpoints")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("fraud_threshold")

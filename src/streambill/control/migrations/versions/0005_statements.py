"""Month close and payouts: statements, payout runs, payouts, payout files.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "statements",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("reseller_id", sa.String(length=128), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("reseller_name", sa.String(length=256), nullable=False),
        sa.Column("brand_name", sa.String(length=128), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("base_micros", sa.BigInteger(), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("rate", sa.String(length=32), nullable=False),
        sa.Column("commission_micros", sa.BigInteger(), nullable=False),
        sa.Column("bonus_micros", sa.BigInteger(), nullable=False),
        sa.Column("month_total_micros", sa.BigInteger(), nullable=False),
        sa.Column("late_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_micros", sa.BigInteger(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("late_lines", sa.JSON(), nullable=False),
        _at("closed_at"),
        sa.Column("closed_by", sa.String(length=256), nullable=False),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.Column("carried_run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["reseller_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_statements_reseller_month", "statements", ["reseller_id", "month"], unique=True
    )
    op.create_index("ix_statements_payout_id", "statements", ["payout_id"])

    op.create_table(
        "payout_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        _at("created_at"),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("minimum", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("reseller_id", sa.String(length=128), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("statements_micros", sa.BigInteger(), nullable=False),
        sa.Column("carried_in_micros", sa.BigInteger(), nullable=False),
        sa.Column("remainder_micros", sa.BigInteger(), nullable=False),
        sa.Column("statement_ids", sa.JSON(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("creditor_name", sa.String(length=140), nullable=True),
        sa.Column("creditor_iban", sa.String(length=34), nullable=True),
        sa.Column("creditor_bic", sa.String(length=11), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        _at("paid_at", nullable=True),
        _at("failed_at", nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["payout_runs.id"]),
        sa.ForeignKeyConstraint(["reseller_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_payouts_run_id", "payouts", ["run_id"])
    op.create_index("ix_payouts_reseller_id", "payouts", ["reseller_id"])

    op.create_table(
        "payout_files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["run_id"], ["payout_runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id"),
    )


def downgrade() -> None:
    op.drop_table("payout_files")
    op.drop_index("ix_payouts_reseller_id", table_name="payouts")
    op.drop_index("ix_payouts_run_id", table_name="payouts")
    op.drop_table("payouts")
    op.drop_table("payout_runs")
    op.drop_index("ix_statements_payout_id", table_name="statements")
    op.drop_index("uq_statements_reseller_month", table_name="statements")
    op.drop_table("statements")

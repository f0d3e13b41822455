"""Budgets: a limit per key (per month or in total) and what each period has held and spent.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("budget_nanos", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("budget_period", sa.String(8), nullable=False, server_default="month")
        )
        batch.create_check_constraint("budget_period", "budget_period IN ('month', 'total')")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("budget_period_start", UTCDateTime(), nullable=True))
    op.create_table(
        "budget_periods",
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("held_nanos", sa.BigInteger(), nullable=False),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_budget_periods_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("api_key_id", "period_start", name=op.f("pk_budget_periods")),
    )


def downgrade() -> None:
    op.drop_table("budget_periods")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("budget_period_start")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_budget_period"), type_="check")
        batch.drop_column("budget_period")
        batch.drop_column("budget_nanos")

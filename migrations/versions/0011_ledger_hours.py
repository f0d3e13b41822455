"""The ledger summed per UTC hour, for the usage reports' reconciliation line.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_hours",
        sa.Column("hour_start", UTCDateTime(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour_start", name=op.f("pk_ledger_hours")),
    )
    with op.batch_alter_table("usage_rollup_state") as batch:
        batch.add_column(sa.Column("ledger_checked_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_rollup_state") as batch:
        batch.drop_column("ledger_checked_until")
    op.drop_table("ledger_hours")

"""The account-wide upstream limiter's state, for deployments without Redis.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    gate = op.create_table(
        "upstream_gate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tat_us", sa.BigInteger(), nullable=False),
        sa.Column("paused_until_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_gate")),
    )
    op.bulk_insert(gate, [{"id": 1, "tat_us": 0, "paused_until_us": 0}])


def downgrade() -> None:
    op.drop_table("upstream_gate")

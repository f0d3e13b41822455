"""Each upstream attempt of a job, recorded when it ends.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("upstream_ms", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("upstream_code", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('succeeded', 'retrying', 'failed', 'lost')",
            name=op.f("ck_job_attempts_outcome"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_attempts_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "number", name=op.f("pk_job_attempts")),
    )
    op.create_index(op.f("ix_job_attempts_ended_at"), "job_attempts", ["ended_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_attempts_ended_at"), table_name="job_attempts")
    op.drop_table("job_attempts")

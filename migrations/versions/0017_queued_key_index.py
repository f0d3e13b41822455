"""An index of the queued jobs by key, so that a worker's claim costs as many index seeks as
there are keys with jobs queued, instead of a count of the whole backlog (51 ms a claim at
100,000 queued before).

Partial: only queued jobs are in it, so it stays as small as the queue. On PostgreSQL it is
built without blocking writes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Outside a transaction: a concurrent build lets the jobs table take writes meanwhile.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_jobs_queued_key",
                "jobs",
                ["api_key_id", "id"],
                postgresql_where=QUEUED,
                postgresql_concurrently=True,
            )
    else:
        op.create_index("ix_jobs_queued_key", "jobs", ["api_key_id", "id"], sqlite_where=QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_key", table_name="jobs")

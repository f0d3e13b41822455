"""Queue tickets: each job's place in the queue (``jobs.seq``), so that a queue position is a
few index lookups instead of a ranking of every queued job.

Only the jobs queued or running get tickets here, in id (= creation) order: a job that has
ended needs none, and numbering a whole history held the jobs table for 31 s per million jobs.
So the column is nullable (null: ended before tickets existed), and adding it and numbering
the few live jobs is quick; on PostgreSQL the index is built without blocking writes.

On PostgreSQL the tickets come from the sequence ``jobs_seq_seq``, the column's default, which
alone keeps them distinct (jobs of the previous version's processes get theirs from it too).
On SQLite every insert takes the highest ticket plus one (app/jobs/models.py), kept distinct by
a unique index; stop the previous version's processes before migrating (their inserts take no
ticket). SQLite drops the column with ALTER TABLE (3.35 and later); the jobs table cannot be
copied (batch mode) while other tables' rows point at it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BACKFILL = """
UPDATE jobs SET seq = ranked.n
FROM (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs
    WHERE status IN ('queued', 'running')
) AS ranked
WHERE jobs.id = ranked.id
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column("jobs", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(BACKFILL)
    if postgresql:
        op.execute("CREATE SEQUENCE jobs_seq_seq AS bigint OWNED BY jobs.seq")
        op.execute("SELECT setval('jobs_seq_seq', coalesce(max(seq), 0) + 1, false) FROM jobs")
        op.alter_column(
            "jobs",
            "seq",
            existing_type=sa.BigInteger(),
            server_default=sa.text("nextval('jobs_seq_seq')"),
        )
        # Committed first: a concurrent build runs outside a transaction, and lets the jobs
        # table take writes while it reads it.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_jobs_status_seq",
                "jobs",
                ["status", "seq"],
                unique=False,
                postgresql_concurrently=True,
            )
    else:
        op.create_index("ix_jobs_status_seq", "jobs", ["status", "seq"], unique=False)
        # SQLite's next ticket: the highest plus one (see app/jobs/models.py).
        op.create_index("ix_jobs_seq", "jobs", ["seq"], unique=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index("ix_jobs_seq", table_name="jobs")
    op.drop_index("ix_jobs_status_seq", table_name="jobs")
    # Not batch mode: copying the jobs table fails once other tables' rows point at it. On
    # PostgreSQL the sequence goes with the column that owns it.
    op.execute("ALTER TABLE jobs DROP COLUMN seq")

"""Queue tickets: each job's place in the queue (``jobs.seq``), so that a queue position is a
few index lookups instead of a ranking of every queued job.

Existing jobs get tickets in id (= creation) order, and the index (status, seq). On PostgreSQL
the tickets come from the sequence ``jobs_seq_seq``, the column's default, which alone keeps
them distinct. SQLite adds a NOT NULL column only with a default, and the jobs table cannot be
copied (batch mode) while other tables' rows point at it, so there the column keeps a DEFAULT
0 that the models never use: every insert takes the highest ticket plus one
(app/jobs/models.py), found and kept distinct by a unique index on the tickets. SQLite drops
the column with ALTER TABLE (3.35 and later).

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
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs) AS ranked
WHERE jobs.id = ranked.id
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.add_column("jobs", sa.Column("seq", sa.BigInteger(), nullable=True))
        op.execute("CREATE SEQUENCE jobs_seq_seq AS bigint OWNED BY jobs.seq")
        op.execute(BACKFILL)
        op.execute("SELECT setval('jobs_seq_seq', coalesce(max(seq), 0) + 1, false) FROM jobs")
        op.alter_column(
            "jobs",
            "seq",
            existing_type=sa.BigInteger(),
            nullable=False,
            server_default=sa.text("nextval('jobs_seq_seq')"),
        )
    else:
        op.execute("ALTER TABLE jobs ADD COLUMN seq BIGINT NOT NULL DEFAULT 0")
        op.execute(BACKFILL)
    op.create_index("ix_jobs_status_seq", "jobs", ["status", "seq"], unique=False)
    if not postgresql:  # SQLite's next ticket: the highest plus one (see app/jobs/models.py)
        op.create_index("ix_jobs_seq", "jobs", ["seq"], unique=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index("ix_jobs_seq", table_name="jobs")
    op.drop_index("ix_jobs_status_seq", table_name="jobs")
    # Not batch mode: copying the jobs table fails once other tables' rows point at it. On
    # PostgreSQL the sequence goes with the column that owns it.
    op.execute("ALTER TABLE jobs DROP COLUMN seq")

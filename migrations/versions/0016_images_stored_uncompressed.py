"""Image bytes stored without compression on PostgreSQL.

PNG, JPEG and WebP are compressed already: PostgreSQL's attempt to compress each stored image
(its default for bytea) gains nothing and cost about 0.7 ms of the database's CPU per 512x512
output, a third of a job's finish. EXTERNAL keeps large values out of line, as before, without
trying. Rows stored earlier stay as they are; SQLite has no such setting.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

COLUMNS = (("job_images", "data"), ("job_thumbnails", "data"))


def _set_storage(storage: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE {storage}")


def upgrade() -> None:
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")

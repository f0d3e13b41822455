"""Image retention: when a job's images were deleted, image bytes that can be gone, and indexes
for the purges (jobs due, expired links, webhook answer excerpts).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("images_expired_at", UTCDateTime(), nullable=True))
    op.create_index(
        "ix_jobs_images_due",
        "jobs",
        ["completed_at"],
        unique=False,
        postgresql_where=sa.text("images_expired_at IS NULL"),
        sqlite_where=sa.text("images_expired_at IS NULL"),
    )
    # Retention deletes the bytes and keeps the row (its metadata is the Job's output block).
    with op.batch_alter_table("job_images") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)
    op.create_index(op.f("ix_image_links_expires_at"), "image_links", ["expires_at"], unique=False)
    op.create_index(
        "ix_webhook_attempts_excerpt_started_at",
        "webhook_attempts",
        ["started_at"],
        unique=False,
        postgresql_where=sa.text("response_excerpt IS NOT NULL"),
        sqlite_where=sa.text("response_excerpt IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_excerpt_started_at", table_name="webhook_attempts")
    op.drop_index(op.f("ix_image_links_expires_at"), table_name="image_links")
    # Deleted images become empty ones: the column cannot hold "gone" any more.
    images = sa.table("job_images", sa.column("data", sa.LargeBinary()))
    op.execute(images.update().where(images.c.data.is_(None)).values(data=b""))
    with op.batch_alter_table("job_images") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_index("ix_jobs_images_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("images_expired_at")

"""Expiring image links for the OpenAI-compatible url responses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_links",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_image_links_job_id_jobs")),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_image_links")),
    )
    op.create_index("ix_image_links_job_id", "image_links", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_image_links_job_id", table_name="image_links")
    op.drop_table("image_links")

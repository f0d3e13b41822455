"""The hourly usage rollup and its watermark; indexes for the admin reports and job listing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

logger = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "usage_hours",
        sa.Column("hour_start", UTCDateTime(), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("output_tiles", sa.BigInteger(), nullable=False),
        sa.Column("input_tiles", sa.BigInteger(), nullable=False),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=False),
        sa.Column("neuron_jobs", sa.BigInteger(), nullable=False),
        sa.Column("implied_nanos", sa.BigInteger(), nullable=False),
        sa.Column("neuron_charged_nanos", sa.BigInteger(), nullable=False),
        *(
            sa.Column(f"{measure}_before_{minutes}", sa.BigInteger(), nullable=False)
            for minutes in (15, 30, 45)
            for measure in ("jobs", "output_tiles", "input_tiles", "charged_nanos")
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_usage_hours_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("hour_start", "api_key_id", "model", name=op.f("pk_usage_hours")),
    )
    op.create_index(
        "ix_usage_hours_api_key_id_hour_start", "usage_hours", ["api_key_id", "hour_start"]
    )
    state = op.create_table(
        "usage_rollup_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("rolled_until", UTCDateTime(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_usage_rollup_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollup_state")),
    )
    op.bulk_insert(state, [{"id": 1, "rolled_until": None}])
    op.create_index("ix_charges_created_at", "charges", ["created_at"])
    op.create_index("ix_jobs_model_id", "jobs", ["model", "id"])
    if op.get_bind().dialect.name == "postgresql":
        _prompt_trigrams()


def _prompt_trigrams() -> None:
    """Trigrams make a case-insensitive substring search of prompts an index lookup. pg_trgm
    is a trusted extension (PostgreSQL 13+): the database owner may create it. Where it is
    missing or not allowed, prompt search still works, by scanning."""
    bind = op.get_bind()
    available = bind.exec_driver_sql(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
    ).scalar()
    if not available:
        logger.warning("pg_trgm is not available: prompt search will scan the jobs")
        return
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as error:
        logger.warning("cannot create pg_trgm (%s): prompt search will scan the jobs", error)
        return
    op.create_index(
        "ix_jobs_prompt_trgm",
        "jobs",
        ["prompt"],
        postgresql_using="gin",
        postgresql_ops={"prompt": "gin_trgm_ops"},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_prompt_trgm")
    op.drop_index("ix_jobs_model_id", table_name="jobs")
    op.drop_index("ix_charges_created_at", table_name="charges")
    op.drop_table("usage_rollup_state")
    op.drop_index("ix_usage_hours_api_key_id_hour_start", table_name="usage_hours")
    op.drop_table("usage_hours")

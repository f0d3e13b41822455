"""Keys, jobs, images, the ledger and the price table with Workers AI's published prices.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.core.orm import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Workers AI pricing page (workers-ai.md), in nano-USD.
PRICES_EFFECTIVE_FROM = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_PRICES = [
    # model, output_unit, input_unit, per_step, first output unit, further output unit, input unit
    ("flux-2-klein-4b", "tile", "tile", False, 287_000, 287_000, 59_000),
    ("flux-2-klein-9b", "megapixel", "megapixel", False, 15_000_000, 2_000_000, 2_000_000),
    ("flux-2-dev", "tile", "tile", True, 410_000, 410_000, 210_000),
]


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("display_prefix", sa.String(16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("webhook_secret", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    prices = op.create_table(
        "prices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("output_unit", sa.String(16), nullable=False),
        sa.Column("input_unit", sa.String(16), nullable=False),
        sa.Column("per_step", sa.Boolean(), nullable=False),
        sa.Column("output_first_unit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("output_unit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("input_unit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "output_unit IN ('tile', 'megapixel')", name=op.f("ck_prices_output_unit")
        ),
        sa.CheckConstraint(
            "input_unit IN ('tile', 'megapixel')", name=op.f("ck_prices_input_unit")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
        sa.UniqueConstraint("model", "effective_from", name=op.f("uq_prices_model")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("guidance", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("input_image_count", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("price_id", sa.Integer(), nullable=False),
        sa.Column("estimated_nanos", sa.BigInteger(), nullable=False),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=True),
        sa.Column("input_tiles", sa.Integer(), nullable=False),
        sa.Column("output_tiles", sa.Integer(), nullable=False),
        sa.Column("upstream_neurons", sa.String(32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("not_before", UTCDateTime(), nullable=True),
        sa.Column("enqueued_at", UTCDateTime(), nullable=True),
        sa.Column("upstream_ms", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_upstream_code", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_jobs_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(["price_id"], ["prices.id"], name=op.f("fk_jobs_price_id_prices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_api_key_id_id", "jobs", ["api_key_id", "id"])
    op.create_index("ix_jobs_api_key_id_status_id", "jobs", ["api_key_id", "status", "id"])
    op.create_table(
        "job_images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("role IN ('output', 'input')", name=op.f("ck_job_images_role")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_images_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_images")),
        sa.UniqueConstraint("job_id", "role", "position", name=op.f("uq_job_images_job_id")),
    )
    op.create_table(
        "charges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("price_id", sa.Integer(), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_charges_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_charges_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["price_id"], ["prices.id"], name=op.f("fk_charges_price_id_prices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charges")),
        sa.UniqueConstraint("job_id", name=op.f("uq_charges_job_id")),
    )
    op.create_index("ix_charges_api_key_id", "charges", ["api_key_id"])

    now = datetime.now(UTC)
    op.bulk_insert(
        prices,
        [
            {
                "model": model,
                "effective_from": PRICES_EFFECTIVE_FROM,
                "output_unit": output_unit,
                "input_unit": input_unit,
                "per_step": per_step,
                "output_first_unit_nanos": first,
                "output_unit_nanos": further,
                "input_unit_nanos": per_input,
                "created_at": now,
            }
            for (model, output_unit, input_unit, per_step, first, further, per_input) in (
                DEFAULT_PRICES
            )
        ],
    )


def downgrade() -> None:
    op.drop_table("charges")
    op.drop_table("job_images")
    op.drop_index("ix_jobs_api_key_id_status_id", table_name="jobs")
    op.drop_index("ix_jobs_api_key_id_id", table_name="jobs")
    op.drop_index("ix_jobs_status_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("prices")
    op.drop_table("api_keys")

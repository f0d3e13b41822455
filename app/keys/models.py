from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.orm import Base, UTCDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("budget_period IN ('month', 'total')", name="budget_period"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the full key; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, to recognise it in lists and logs.
    display_prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Signing secret for this key's webhooks (the receiver needs the same value, so not hashed).
    webhook_secret: Mapped[str] = mapped_column(String(100))
    # The secret before the last rotation: deliveries carry its signature too until it expires.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_webhook_secret_expires_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, default=None
    )
    # Spending limit in nano-USD per calendar month (UTC) or in total; none when null.
    budget_nanos: Mapped[int | None] = mapped_column(BigInteger, default=None)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    # Job submissions per minute, and jobs queued or running at once; none when null.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    # Retired: jobs queued or running are counted from `jobs` now (app/jobs/accounting.py).
    # The column stays one release, so processes of the previous version that still update
    # it keep working during a rolling upgrade; nothing reads it.
    retired_active_jobs: Mapped[int] = mapped_column("active_jobs", Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RateWindow(Base):
    """Job submissions of a key in one minute, where no Redis is configured (the embedded
    default; app/keys/limits.py); production counts in Redis."""

    __tablename__ = "rate_windows"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)

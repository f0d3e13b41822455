"""Webhook deliveries: one row per job event to send, one row per attempt made."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.core.orm import Base, UTCDateTime, utcnow


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # an attempt is due now or later
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # the schedule ran out, the receiver answered 410, or the URL is unsafe


class WebhookDelivery(Base):
    """One event for one job's ``webhook_url``. Its id is the ``webhook-id`` header, the same
    on every attempt, so receivers can drop repeats; the body is fixed when the event happens."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # A job ends once: a task that runs twice cannot make a second delivery.
        UniqueConstraint("job_id", "event_type"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        # The sweeper's scan for due attempts.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Which delay of the retry schedule comes after the next failure.
    schedule_step: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set while an attempt is in flight; a worker that dies leaves it to run out.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a broker message was last sent for the due attempt (null: none is on its way).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """What one attempt saw: when, the answer's status (or the error), how long it took, and
    when the next attempt is due (null: none)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number"),
        # Retention's scan for excerpts past IMAGE_RETENTION_DAYS: only attempts that still
        # hold one.
        Index(
            "ix_webhook_attempts_excerpt_started_at",
            "started_at",
            postgresql_where=text("response_excerpt IS NOT NULL"),
            sqlite_where=text("response_excerpt IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # The start of the answer's body, for debugging a receiver (bounded); cleared after
    # IMAGE_RETENTION_DAYS.
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

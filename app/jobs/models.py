from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Compiled
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

from app.core.orm import Base, UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
# Not ended yet; a job in one of these holds one of its key's concurrency slots.
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class NextQueueTicket(FunctionElement[int]):
    """The next job's queue ticket (``jobs.seq``), computed by the INSERT itself.

    PostgreSQL: the sequence ``jobs_seq_seq`` (also the column's server default, for rows not
    written by the ORM). SQLite: one more than the highest ticket, read by the INSERT inside
    SQLite's single write lock, so two submits can never take the same one (the unique
    ``ix_jobs_seq`` would refuse it anyway). One row per INSERT: see ``batch`` on :class:`Job`.
    """

    type = BigInteger()
    inherit_cache = True
    name = "next_queue_ticket"


@compiles(NextQueueTicket, "postgresql")
def _ticket_postgresql(_element: NextQueueTicket, _compiler: Compiled, **_kw: object) -> str:
    return "nextval('jobs_seq_seq')"


@compiles(NextQueueTicket, "sqlite")
def _ticket_sqlite(_element: NextQueueTicket, _compiler: Compiled, **_kw: object) -> str:
    return "(SELECT coalesce(max(seq), 0) + 1 FROM jobs)"


class Job(Base):
    __tablename__ = "jobs"
    # One INSERT per job: SQLite's ticket is read from the table, and a multi-row INSERT would
    # give every row the same one.
    __mapper_args__ = {"batch": False}
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="status"
        ),
        # The sweeper and the backlog metrics scan queued jobs in id (= creation) order.
        Index("ix_jobs_status_id", "status", "id"),
        # Queue positions: the oldest queued ticket, and the tickets that left the queue near
        # it, are each one range of this index (app/jobs/service.py, queue_positions).
        Index("ix_jobs_status_seq", "status", "seq"),
        # SQLite's next ticket is the highest one plus one (PostgreSQL has a sequence). Not on
        # PostgreSQL: there its planner could walk it for the oldest queued ticket, through
        # every finished job before it, when the statistics make queued jobs look common.
        Index("ix_jobs_seq", "seq", unique=True).ddl_if(dialect="sqlite"),
        # The keys with jobs queued, one seek each (app/jobs/execution.py, fairest_candidates):
        # only queued jobs, so it stays as small as the queue.
        Index(
            "ix_jobs_queued_key",
            "api_key_id",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        Index("ix_jobs_api_key_id_id", "api_key_id", "id"),
        Index("ix_jobs_api_key_id_status_id", "api_key_id", "status", "id"),
        # The admin listing's model filter (key and status have theirs above; a time range is
        # an id range, ids sorting by creation time).
        Index("ix_jobs_model_id", "model", "id"),
        # Retention's scan for jobs whose images are due: only jobs whose images are still
        # kept, so the index shrinks as they expire.
        Index(
            "ix_jobs_images_due",
            "completed_at",
            postgresql_where=text("images_expired_at IS NULL"),
            sqlite_where=text("images_expired_at IS NULL"),
        ),
        # Prompt search (ILIKE '%text%') on PostgreSQL: trigrams (SQLite scans).
        Index(
            "ix_jobs_prompt_trgm",
            "prompt",
            postgresql_using="gin",
            postgresql_ops={"prompt": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The job's queue ticket: taken at submit, in the order jobs are stored, never changed (a
    # retried job keeps its place). Its queue position counts from it. Null only for jobs
    # that had ended before tickets existed (migration 0015 numbered the live ones).
    seq: Mapped[int | None] = mapped_column(BigInteger, default=NextQueueTicket())
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)

    # What was asked.
    model: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    guidance: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    input_image_count: Mapped[int] = mapped_column(Integer, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # The X-Request-ID of the request that submitted it: the worker logs it with the job's lines.
    request_id: Mapped[str | None] = mapped_column(String(128))

    # Money, known exactly at submit; charged only when an image comes back.
    price_id: Mapped[int] = mapped_column(ForeignKey("prices.id"))
    estimated_nanos: Mapped[int] = mapped_column(BigInteger)
    charged_nanos: Mapped[int | None] = mapped_column(BigInteger)
    input_tiles: Mapped[int] = mapped_column(Integer)
    output_tiles: Mapped[int] = mapped_column(Integer)
    upstream_neurons: Mapped[str | None] = mapped_column(String(32))
    # The budget period the estimate is held in until the job ends; null: no budget applied.
    budget_period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Execution bookkeeping.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    upstream_ms: Mapped[int | None] = mapped_column(Integer)
    # The W3C traceparent of the request that submitted the job, kept only while tracing is
    # on: every attempt's span joins that trace, whichever message started it.
    traceparent: Mapped[str | None] = mapped_column(String(64))

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_upstream_code: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When retention deleted the job's stored images (IMAGE_RETENTION_DAYS after completion);
    # the image then answers 410 image_expired. Null: kept.
    images_expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobAttempt(Base):
    """One upstream attempt of a job, recorded when it ends, in the transaction that records
    its outcome: the job's timeline and the upstream error rates."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        CheckConstraint("outcome IN ('succeeded', 'retrying', 'failed', 'lost')", name="outcome"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Null for an attempt whose worker was lost: only its lease's expiry was seen.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    upstream_ms: Mapped[int | None] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    upstream_code: Mapped[int | None] = mapped_column(Integer)


class JobImage(Base):
    """Image bytes of a job: its output and its input images. Retention deletes the bytes
    (``data`` becomes null) and keeps the rest: the Job's ``output`` block and the pricing of
    its inputs still read it."""

    __tablename__ = "job_images"
    __table_args__ = (
        UniqueConstraint("job_id", "role", "position"),
        CheckConstraint("role IN ('output', 'input')", name="role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    role: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(Integer, default=0)
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImageLink(Base):
    """A URL that serves a job's image without an API key until it expires (the
    OpenAI-compatible ``response_format: url``). Only a hash of the token is stored."""

    __tablename__ = "image_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    # Expired links are purged by beat.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` of one API key: the request it stood for and the job it made.

    ``job_id`` is empty while the first request is still being accepted (until
    ``locked_until``, after which a retry may take over); rows live 24 hours.
    """

    __tablename__ = "idempotency_keys"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

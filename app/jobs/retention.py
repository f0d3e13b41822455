"""Image retention: a job's stored images (its output and its inputs) are deleted
IMAGE_RETENTION_DAYS after the job completed; the job, its charge and its usage are kept.

Counted from completion, not creation: that is when the output came to exist, so every image is
kept the whole period (a job that waited or retried for hours does not lose its output early),
and a job still queued or running, whose inputs are yet to be sent, is never due.

The bytes are deleted and the rows kept: the Job's ``output`` block (size, type, sha256) and the
pricing of its inputs still read them; ``jobs.images_expired_at`` says when and makes the image
routes answer 410 ``image_expired``. Each call is one bounded batch: the edge commits each and
calls again, so no transaction holds many rows for long.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.core.db import rows_affected
from app.core.errors import Gone
from app.jobs.models import ImageLink, Job, JobImage


@dataclass(frozen=True)
class ExpiredImages:
    """One batch: the jobs whose images it deleted, and the images and bytes, by role."""

    job_ids: list[str] = field(default_factory=list)
    images: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)


def expire_images(
    session: Session, *, cutoff: datetime, limit: int, now: datetime
) -> ExpiredImages:
    """Delete the stored images of up to ``limit`` jobs that completed before ``cutoff``,
    oldest first, and mark those jobs. Jobs another run has locked are skipped (PostgreSQL),
    so two runs at once share the work instead of waiting for each other."""
    job_ids = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.images_expired_at.is_(None),
                Job.completed_at.is_not(None),
                Job.completed_at < cutoff,
            )
            .order_by(Job.completed_at)
            .limit(limit)
            # NO KEY UPDATE: rows pointing at these jobs (links, thumbnails) can still be added.
            .with_for_update(skip_locked=True, key_share=True)
        )
    )
    if not job_ids:
        return ExpiredImages()
    kept = JobImage.job_id.in_(job_ids), JobImage.data.is_not(None)
    deleted = ExpiredImages(job_ids=job_ids)
    for role, count, size in session.execute(
        select(JobImage.role, func.count(), func.coalesce(func.sum(JobImage.size_bytes), 0))
        .where(*kept)
        .group_by(JobImage.role)
    ):
        deleted.images[role] += int(count)
        deleted.bytes[role] += int(size)
    session.execute(update(JobImage).where(*kept).values(data=None))
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids))
        .values(images_expired_at=now)
        .execution_options(synchronize_session=False)
    )
    return deleted


def expired(job: Job) -> Gone:
    """The answer for an image retention has deleted: when, and that the job remains."""
    at = job.images_expired_at
    when = "" if at is None else f" on {at:%Y-%m-%d %H:%M} UTC"
    return Gone(
        f"the images of job {job.id} were deleted{when} by the retention policy "
        "(IMAGE_RETENTION_DAYS after the job completed); the job and its charge are kept",
        code="image_expired",
    )


def purge_expired_links(session: Session, *, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` image links past their expiry; how many."""
    due = select(ImageLink.token_hash).where(ImageLink.expires_at <= now).limit(limit)
    return rows_affected(
        session.execute(
            delete(ImageLink)
            .where(ImageLink.token_hash.in_(due.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
    )

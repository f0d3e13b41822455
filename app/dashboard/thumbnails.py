"""Thumbnails for the Jobs page: made from the output image the first time a job is listed, kept
in the database, and sent inside the page (``data:`` URLs), so a page of 50 jobs is one request
and decodes nothing the second time."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import rows_affected
from app.core.images import ImageError, thumbnail
from app.dashboard.models import JobThumbnail
from app.jobs.models import Job, JobImage

THUMBNAIL_SIDE = 96


def thumbnails_of(session: Session, *, job_ids: Sequence[str]) -> dict[str, str]:
    """``data:`` URLs of the thumbnails of those jobs that still have an output image. The
    caller leaves out jobs whose images retention deleted: a thumbnail made from the output
    while retention was deleting it may be left behind (until :func:`purge_left_behind`), and
    must not be shown."""
    if not job_ids:
        return {}
    found = dict(
        session.execute(
            select(JobThumbnail.job_id, JobThumbnail.data).where(JobThumbnail.job_id.in_(job_ids))
        ).all()
    )
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        outputs = session.execute(
            select(JobImage.job_id, JobImage.data).where(
                JobImage.job_id.in_(missing),
                JobImage.role == "output",
                JobImage.data.is_not(None),
            )
        ).all()
        for job_id, image in outputs:
            if image is None:  # left out by the query; for the type
                continue
            try:
                data = thumbnail(image, side=THUMBNAIL_SIDE)
            except ImageError:
                continue
            found[job_id] = data
            try:
                with session.begin_nested():
                    session.add(JobThumbnail(job_id=job_id, data=data))
            except IntegrityError:
                pass  # a concurrent page made the same thumbnail first
    return {
        job_id: "data:image/webp;base64," + base64.b64encode(data).decode()
        for job_id, data in found.items()
    }


def purge_left_behind(session: Session, *, limit: int) -> int:
    """Delete up to ``limit`` thumbnails of jobs whose images retention has deleted (made by a
    page from the output while the batch was deleting it); how many."""
    left = (
        select(JobThumbnail.job_id)
        .join(Job, Job.id == JobThumbnail.job_id)
        .where(Job.images_expired_at.is_not(None))
        .limit(limit)
    )
    return rows_affected(
        session.execute(
            delete(JobThumbnail)
            .where(JobThumbnail.job_id.in_(left.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
    )


def forget(session: Session, *, job_ids: Sequence[str]) -> None:
    """Delete the thumbnails of these jobs: a thumbnail is an image too, and goes with the
    output when retention deletes it."""
    if job_ids:
        session.execute(delete(JobThumbnail).where(JobThumbnail.job_id.in_(job_ids)))

"""Thumbnails for the Jobs page: made from the output image on first view, kept in the database
(so a page of 50 jobs decodes nothing the second time), served with long-lived caching."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.images import thumbnail
from app.dashboard.models import JobThumbnail
from app.jobs.models import JobImage

THUMBNAIL_SIDE = 96


def thumbnail_of(session: Session, *, job_id: str) -> bytes:
    kept = session.scalar(select(JobThumbnail.data).where(JobThumbnail.job_id == job_id))
    if kept is not None:
        return kept
    output = session.scalar(
        select(JobImage.data).where(JobImage.job_id == job_id, JobImage.role == "output")
    )
    if output is None:
        raise NotFound("this job has no output image", code="image_not_found")
    data = thumbnail(output, side=THUMBNAIL_SIDE)
    try:
        with session.begin_nested():
            session.add(JobThumbnail(job_id=job_id, data=data))
    except IntegrityError:
        pass  # a concurrent view made the same thumbnail first
    return data

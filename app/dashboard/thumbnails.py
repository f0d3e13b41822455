"""Thumbnails for the Jobs page: made from the output image the first time a job is listed, kept
in the database, and sent inside the page (``data:`` URLs), so a page of 50 jobs is one request
and decodes nothing the second time."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.images import ImageError, thumbnail
from app.dashboard.models import JobThumbnail
from app.jobs.models import JobImage

THUMBNAIL_SIDE = 96


def thumbnails_of(session: Session, *, job_ids: Sequence[str]) -> dict[str, str]:
    """``data:`` URLs of the thumbnails of those jobs that still have an output image. The
    caller leaves out jobs whose images retention deleted: a thumbnail made from the output
    while retention was deleting it may be left behind, and must not be shown."""
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


def forget(session: Session, *, job_ids: Sequence[str]) -> None:
    """Delete the thumbnails of these jobs: a thumbnail is an image too, and goes with the
    output when retention deletes it."""
    if job_ids:
        session.execute(delete(JobThumbnail).where(JobThumbnail.job_id.in_(job_ids)))

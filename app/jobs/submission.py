"""Accepting jobs, for every route that submits (``POST /v1/jobs``, the OpenAI endpoints).

For ``POST /v1/jobs`` the jobs are stored and their answer rendered in one transaction; only a
rendered answer is committed, and the jobs' broker messages leave through the outbox once it
is. A repeated ``Idempotency-Key`` finds the job the first request made instead. The OpenAI
endpoints answer with images, not Jobs: they only create the jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from app.core import metrics
from app.core.db import end_read
from app.jobs import idempotency, service
from app.jobs.models import Job
from app.jobs.schemas import JobOut
from app.jobs.service import JobSubmission
from app.keys.known import Submitter
from app.keys.service import live_key


@dataclass(frozen=True)
class Accepted:
    jobs: list[JobOut]
    # Each job's JSON as the answer carries it, rendered before anything was committed.
    rendered: list[bytes]
    replayed: bool = False


def _answer(session: Session, jobs: Sequence[Job], public_url: str | None) -> Accepted:
    out = service.to_job_out(session, jobs, public_url=public_url)
    return Accepted(jobs=out, rendered=[job.model_dump_json().encode() for job in out])


def create_jobs(
    session: Session, *, submitter: Submitter, submissions: Sequence[JobSubmission]
) -> list[str]:
    """Create one job per submission and commit, for routes whose answer is not the Job (the
    OpenAI endpoints wait for the images): nothing is rendered, so no queue position is
    computed. The ids of the jobs, in order."""
    api_key = live_key(session, key_id=submitter.id)
    jobs = [
        service.create_job(session, api_key=api_key, submission=submission)
        for submission in submissions
    ]
    session.commit()
    return [job.id for job in jobs]


def submit(
    session: Session,
    *,
    submitter: Submitter,
    submissions: Sequence[JobSubmission],
    public_url: str | None,
    idempotency_key: str | None = None,
) -> Accepted:
    """Create one job per submission, render the answer, commit (the outbox then sends the
    jobs to the broker; nothing after the commit may fail the request: the jobs are accepted).
    With an ``idempotency_key`` (one submission only), a repeat returns the first request's
    job. ``public_url``: for the links in the answer. The key is read again first: one revoked
    since it was authenticated is refused (401)."""
    api_key = live_key(session, key_id=submitter.id)
    if idempotency_key is None:
        jobs = [
            service.create_job(session, api_key=api_key, submission=submission)
            for submission in submissions
        ]
        accepted = _answer(session, jobs, public_url)
        session.commit()
        return accepted
    (submission,) = submissions
    key = idempotency.check_key(idempotency_key)
    earlier = idempotency.reserve(
        session, api_key_id=api_key.id, key=key, fingerprint=idempotency.fingerprint(submission)
    )
    session.commit()  # the reservation is visible to concurrent duplicates from here on
    if earlier is not None:
        metrics.IDEMPOTENT_REPLAYS.inc()
        earlier_job = service.get_job(session, api_key=api_key, job_id=earlier)
        replay = _answer(session, [earlier_job], public_url)
        end_read(session)
        return replace(replay, replayed=True)
    try:
        job = service.create_job(session, api_key=api_key, submission=submission)
        idempotency.complete(session, api_key_id=api_key.id, key=key, job_id=job.id)
        accepted = _answer(session, [job], public_url)
        session.commit()
    except BaseException:
        session.rollback()
        idempotency.release(session, api_key_id=api_key.id, key=key)
        session.commit()
        raise
    return accepted

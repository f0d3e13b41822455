"""Jobs as the API sees them: submit, read, list, cancel. Services flush; the caller commits."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.orm import Session, load_only

from app.billing.rules import Cost
from app.billing.service import estimate, price_in_force
from app.billing.usage import parse_bound
from app.core import logs, metrics, outbox, tracing
from app.core.db import rows_affected
from app.core.errors import Conflict, InvalidParameter, NotFound
from app.core.ids import id_floor, new_id
from app.core.images import PreparedInput
from app.core.orm import table_of, utcnow
from app.core.paging import newest_first
from app.core.settings import Settings
from app.http.body import RequestBody
from app.jobs import accounting, retention, timings
from app.jobs.inputs import collect_input_images, input_limits
from app.jobs.models import Job, JobAttempt, JobImage, JobStatus
from app.jobs.schemas import (
    EXACT_POSITIONS,
    AdminJobOut,
    JobCreate,
    JobOut,
    OutputImage,
    job_out,
    parse_job_create,
)
from app.keys.models import ApiKey
from app.upstream import catalog
from app.webhooks import service as webhooks
from app.webhooks.targets import UnsafeTarget, check_webhook_url


@dataclass(frozen=True)
class JobSubmission:
    """A validated job request and its input images, ready to price and store."""

    request: JobCreate
    inputs: list[PreparedInput]


def parse_submission(body: RequestBody, settings: Settings) -> JobSubmission:
    fields = dict(body.fields)
    if body.is_form and "input_images" in fields:
        raise InvalidParameter(
            "multipart requests send images as files input_image_0..input_image_3",
            param="input_images",
        )
    request = parse_job_create(
        fields, from_form=body.is_form, prompt_max_chars=settings.prompt_max_chars
    )
    if request.webhook_url is not None:
        try:
            check_webhook_url(request.webhook_url, allowed=settings.webhook_networks)
        except UnsafeTarget as error:
            raise InvalidParameter(str(error), param="webhook_url") from None
    inputs = collect_input_images(
        body,
        request.input_images,
        limits=input_limits(settings),
    )
    return JobSubmission(request=request, inputs=inputs)


@dataclass(frozen=True)
class Quote:
    cost: Cost
    price_id: int


def quote(session: Session, *, submission: JobSubmission) -> Quote:
    request = submission.request
    price = price_in_force(session, model=request.model)
    cost = estimate(
        price,
        width=request.width,
        height=request.height,
        steps=request.resolved_steps,
        input_sizes=[(image.info.width, image.info.height) for image in submission.inputs],
    )
    return Quote(cost=cost, price_id=price.id)


def create_job(session: Session, *, api_key: ApiKey, submission: JobSubmission) -> Job:
    """Store a queued job, its input images and its exact price; its broker message (the id
    only) goes out through the outbox once the caller commits. The job keeps the id of the
    request being served (its X-Request-ID), so that its worker's lines can be found from it."""
    request = submission.request
    priced = quote(session, submission=submission)
    now = utcnow()
    held_in = accounting.admit(
        session, api_key=api_key, amount_nanos=priced.cost.total_nanos, at=now
    )
    job = Job(
        id=new_id("job"),
        api_key_id=api_key.id,
        status=JobStatus.QUEUED,
        model=request.model,
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        seed=request.seed,
        guidance=request.guidance,
        steps=request.resolved_steps,
        input_image_count=len(submission.inputs),
        metadata_=request.metadata,
        webhook_url=request.webhook_url,
        request_id=logs.current_request_id(),
        price_id=priced.price_id,
        estimated_nanos=priced.cost.total_nanos,
        input_tiles=priced.cost.input_tiles,
        output_tiles=priced.cost.output_tiles,
        budget_period_start=held_in,
        attempts=0,
        created_at=now,
        enqueued_at=now,
        # The submit's trace, which the job's attempts continue (None when tracing is off).
        traceparent=tracing.current_traceparent(),
    )
    session.add(job)
    session.add_all(
        JobImage(
            job_id=job.id,
            role="input",
            position=position,
            content_type=image.info.content_type,
            width=image.info.width,
            height=image.info.height,
            size_bytes=image.info.size_bytes,
            sha256=image.info.sha256,
            data=image.data,
        )
        for position, image in enumerate(submission.inputs)
    )
    session.flush()
    outbox.add(session, outbox.ForwardJob(job.id))
    outbox.add(session, outbox.Counted(metrics.JOBS_SUBMITTED, (job.model,)))
    return job


def find_job(session: Session, *, job_id: str) -> Job:
    """Any key's job (an admin's view)."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", code="job_not_found", param="id")
    return job


def get_job(session: Session, *, api_key: ApiKey, job_id: str) -> Job:
    """The caller's own job; anyone else's is indistinguishable from a missing one."""
    job = find_job(session, job_id=job_id)
    if job.api_key_id != api_key.id:
        raise NotFound(f"no job {job_id}", code="job_not_found", param="id")
    return job


def list_jobs(
    session: Session,
    *,
    api_key: ApiKey,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    """Newest first; ``cursor`` is the last id of the previous page."""
    if status is not None and status not in JobStatus.__members__.values():
        raise InvalidParameter(
            f"status must be one of {', '.join(s.value for s in JobStatus)}", param="status"
        )
    query = select(Job).where(Job.api_key_id == api_key.id)
    if status is not None:
        query = query.where(Job.status == status)
    return newest_first(session, query, id_column=Job.id, prefix="job", limit=limit, cursor=cursor)


@dataclass(frozen=True)
class JobFilters:
    """What the admin listing narrows every key's jobs to; ``None`` leaves a filter out.
    ``created_from``/``created_to``: ``from <= created_at < to``; ``prompt_contains``: a
    case-insensitive substring of the prompt."""

    api_key_id: str | None = None
    status: str | None = None
    model: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    job_id: str | None = None
    prompt_contains: str | None = None

    @classmethod
    def from_query(
        cls,
        *,
        key_id: str | None,
        status: str | None,
        model: str | None,
        start: str | None,
        end: str | None,
        job_id: str | None,
        prompt: str | None,
    ) -> JobFilters:
        """The filters as a query string names them (``from``/``to``: a date, midnight UTC, or
        an ISO time); an empty value, as a form sends for "any", leaves a filter out."""
        now = utcnow()
        return cls(
            api_key_id=key_id or None,
            status=status or None,
            model=model or None,
            created_from=parse_bound(start, param="from", default=now) if start else None,
            created_to=parse_bound(end, param="to", default=now) if end else None,
            job_id=job_id or None,
            prompt_contains=prompt or None,
        )


# Three characters at least: the trigram index (PostgreSQL) finds nothing shorter, and a rare
# match would otherwise be looked for through every prompt.
PROMPT_SEARCH_MIN_CHARS = 3
PROMPT_SEARCH_MAX_CHARS = 200
# Ids carry the millisecond they were made at, a moment after created_at was taken: a time
# range also bounds the ids, with this slack, so the primary key's index narrows the scan.
ID_TIME_SLACK_MS = 60_000


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_all_jobs(
    session: Session, *, filters: JobFilters, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Every key's jobs, newest first, narrowed by ``filters``; ``cursor`` is the last id of
    the previous page. Each filter has an index to walk in id order (key, status, model, key
    and status; a time range is an id range; prompts have trigrams on PostgreSQL), so a page
    costs about its own rows, however large the table; nothing is counted."""
    if filters.status is not None and filters.status not in JobStatus.__members__.values():
        raise InvalidParameter(
            f"status must be one of {', '.join(s.value for s in JobStatus)}", param="status"
        )
    query = select(Job)
    if filters.model is not None:
        try:
            query = query.where(Job.model == catalog.model_id(filters.model))
        except ValueError as error:
            raise InvalidParameter(str(error), param="model") from None
    if filters.api_key_id is not None:
        query = query.where(Job.api_key_id == filters.api_key_id)
    if filters.status is not None:
        query = query.where(Job.status == filters.status)
    if filters.job_id is not None:
        query = query.where(Job.id == filters.job_id)
    if filters.created_from is not None:
        low = int(filters.created_from.timestamp() * 1000) - ID_TIME_SLACK_MS
        query = query.where(Job.created_at >= filters.created_from, Job.id >= id_floor("job", low))
    if filters.created_to is not None:
        if filters.created_from is not None and filters.created_to <= filters.created_from:
            raise InvalidParameter("to must be after from", param="to")
        high = int(filters.created_to.timestamp() * 1000) + ID_TIME_SLACK_MS
        query = query.where(Job.created_at < filters.created_to, Job.id < id_floor("job", high))
    if filters.prompt_contains is not None:
        text = filters.prompt_contains
        if not PROMPT_SEARCH_MIN_CHARS <= len(text) <= PROMPT_SEARCH_MAX_CHARS:
            raise InvalidParameter(
                f"q must be {PROMPT_SEARCH_MIN_CHARS}..{PROMPT_SEARCH_MAX_CHARS} characters",
                param="q",
            )
        query = query.where(Job.prompt.ilike(_like_pattern(text), escape="\\"))
    return newest_first(session, query, id_column=Job.id, prefix="job", limit=limit, cursor=cursor)


WEBHOOK_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}


def job_changed(session: Session, *, job_id: str, status: str, job: bytes | None = None) -> None:
    """Tell waiting requests and event streams, once the change is committed (with ``job``,
    the ended job's answer, which they can then send without reading it)."""
    outbox.add(session, outbox.JobChanged(job_id, status, job))


def job_ended(
    session: Session, *, job: Job, public_url: str | None, output: OutputImage | None = None
) -> None:
    """Everything that follows a job's final status, in the same transaction: its budget hold
    and concurrency slot, its webhook and the notification, both with the Job as its answers
    show it (links under ``public_url``; ``output``: its image, when the caller has just
    stored it)."""
    accounting.job_ended(session, job=job, succeeded=job.status == JobStatus.SUCCEEDED)
    known = {job.id: output} if output is not None else None
    ended = to_job_out(session, [job], public_url=public_url, outputs=known)[0]
    if job.webhook_url is not None:
        webhooks.record_event(
            session,
            job_id=job.id,
            api_key_id=job.api_key_id,
            url=job.webhook_url,
            event_type=WEBHOOK_EVENTS[JobStatus(job.status)],
            data=ended.model_dump(mode="json"),
            at=job.completed_at or utcnow(),
        )
    job_changed(session, job_id=job.id, status=job.status, job=ended.model_dump_json().encode())
    outbox.add(session, outbox.Counted(metrics.JOBS_FINISHED, (job.model, job.status)))


def job_statuses(session: Session, *, job_ids: Sequence[str]) -> dict[str, str]:
    """The status of each job that exists, in one query (ownership is the caller's business)."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
    return dict(rows.tuples().all())


def cancel_job(session: Session, *, api_key: ApiKey, job_id: str, public_url: str | None) -> Job:
    """Only a queued job can be canceled: once running, the upstream call cannot be taken back."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.api_key_id == api_key.id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELED,
            completed_at=now,
            charged_nanos=0,
            lease_expires_at=None,
            not_before=None,
        )
        .execution_options(synchronize_session=False)
    )
    job = get_job(session, api_key=api_key, job_id=job_id)
    if rows_affected(result) != 1:
        raise Conflict(
            f"job {job_id} is {job.status}; only queued jobs can be canceled",
            code="job_not_cancelable",
        )
    job_ended(session, job=job, public_url=public_url)
    return job


def output_image(session: Session, *, job: Job) -> JobImage:
    """The job's output with its bytes: 409 until it has succeeded, 410 once retention has
    deleted it."""
    image = session.scalar(
        select(JobImage).where(
            JobImage.job_id == job.id, JobImage.role == "output", JobImage.position == 0
        )
    )
    if job.status != JobStatus.SUCCEEDED or image is None:
        raise Conflict(
            f"job {job.id} is {job.status}; its image exists once it has succeeded",
            code="image_not_ready",
        )
    if job.images_expired_at is not None or image.data is None:
        raise retention.expired(job)
    return image


_LEFT_THE_QUEUE = tuple(status for status in JobStatus if status != JobStatus.QUEUED)


def queue_positions(session: Session, *, jobs: Sequence[Job]) -> dict[str, int]:
    """The queue position of each queued job of ``jobs`` (see ``JobOut.queue_position``).

    Two index range reads, however many jobs are asked about and however long the queue: the
    oldest queued ticket, and the tickets of the jobs that left the queue within
    EXACT_POSITIONS of it (so at most that many rows). Position = 1 + the tickets from the
    oldest queued one up to the job's, less those known to have left. Tickets of jobs still
    being submitted (other transactions) count as ahead: positions computed against the same
    front, in one answer or in several, are distinct and ordered as the tickets are.
    """
    tickets = {
        job.id: job.seq for job in jobs if job.status == JobStatus.QUEUED and job.seq is not None
    }
    if not tickets:
        return {}
    shown = set(tickets.values())
    oldest_queued, left_near = _position_reads()
    oldest = session.scalar(oldest_queued)
    # A job read as queued may have left the queue since: as shown, it still counts.
    head = min(shown) if oldest is None else min(oldest, min(shown))
    end = min(max(shown), head + EXACT_POSITIONS)
    left: list[int] = []
    if end > head:
        left_seqs = session.scalars(left_near, {"head": head, "end": end})
        left = sorted({seq for seq in left_seqs if seq is not None} - shown)
    return {job_id: seq - head + 1 - bisect_left(left, seq) for job_id, seq in tickets.items()}


@cache
def _position_reads() -> tuple[Select[int | None], Select[int | None]]:
    """:func:`queue_positions`' two reads, built once on the table: they run for every
    submission, and building them through the ORM cost more than running them."""
    jobs = table_of(Job)
    oldest_queued = (
        select(jobs.c.seq).where(jobs.c.status == JobStatus.QUEUED.value).order_by(jobs.c.seq)
    ).limit(1)
    left_near = select(jobs.c.seq).where(
        jobs.c.status.in_([status.value for status in _LEFT_THE_QUEUE]),
        jobs.c.seq >= bindparam("head"),
        jobs.c.seq < bindparam("end"),
    )
    return oldest_queued, left_near


def to_job_out(
    session: Session,
    jobs: Sequence[Job],
    *,
    public_url: str | None,
    outputs: Mapping[str, OutputImage] | None = None,
) -> list[JobOut]:
    """The contract's Job for each row, its links under ``public_url`` (relative without one);
    the output images' metadata given (``outputs``, by job id), the others' fetched in one
    query, without bytes."""
    found: dict[str, OutputImage] = dict(outputs or {})
    succeeded = [
        job.id for job in jobs if job.status == JobStatus.SUCCEEDED and job.id not in found
    ]
    if succeeded:
        rows = session.scalars(
            select(JobImage)
            .options(
                load_only(
                    JobImage.job_id,
                    JobImage.content_type,
                    JobImage.width,
                    JobImage.height,
                    JobImage.size_bytes,
                    JobImage.sha256,
                )
            )
            .where(JobImage.job_id.in_(succeeded), JobImage.role == "output")
        )
        found.update({row.job_id: row for row in rows})
    positions = queue_positions(session, jobs=jobs)
    spent = job_timings(session, jobs=jobs)
    return [
        job_out(job, found.get(job.id), positions.get(job.id), spent[job.id], public_url=public_url)
        for job in jobs
    ]


def server_timing_of(session: Session, *, jobs: Sequence[Job]) -> str:
    """``Server-Timing`` for a request that waited for ``jobs`` to end: the times of the one
    that ended last, which is what it waited for ("" when none spent any)."""
    last = max(jobs, key=lambda job: job.completed_at or job.created_at)
    spent = job_timings(session, jobs=[last])[last.id]
    return timings.server_timing(
        queue_ms=spent.queue_ms, upstream_ms=spent.upstream_ms, overhead_ms=spent.overhead_ms
    )


def job_timings(session: Session, jobs: Sequence[Job]) -> dict[str, timings.Timings]:
    """Where each job's time went; the attempts of retried jobs read in one query."""
    retried = [job.id for job in jobs if timings.needs_attempts(job)]
    attempts: dict[str, list[JobAttempt]] = {}
    if retried:
        for attempt in session.scalars(select(JobAttempt).where(JobAttempt.job_id.in_(retried))):
            attempts.setdefault(attempt.job_id, []).append(attempt)
    return {job.id: timings.job_timings(job, attempts.get(job.id, ())) for job in jobs}


def to_admin_job_out(
    session: Session, jobs: Sequence[Job], *, public_url: str | None
) -> list[AdminJobOut]:
    """The Job of each row, with its key's id."""
    return [
        AdminJobOut(**out.model_dump(), key_id=job.api_key_id)
        for job, out in zip(jobs, to_job_out(session, jobs, public_url=public_url), strict=True)
    ]

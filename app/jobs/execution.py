"""Jobs as the worker sees them: claim, finish once, retry later, sweep what was dropped.

Every state change is a conditional UPDATE on (status, attempts), so a task that runs twice,
a worker killed mid-call, or a sweeper racing a worker can never finish a job twice; the
unique ``charges.job_id`` makes a second charge impossible as well.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import (
    CTE,
    BindParameter,
    ColumnElement,
    Integer,
    ScalarSelect,
    Select,
    String,
    Update,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.billing.service import record_charge
from app.core import metrics, outbox
from app.core.db import rows_affected
from app.core.images import ImageInfo
from app.core.orm import UTCDateTime, insert_into, utcnow
from app.jobs.models import Job, JobAttempt, JobImage, JobStatus
from app.jobs.service import job_changed, job_ended
from app.upstream import catalog
from app.upstream.workers_ai import GenerationRequest, InputImage, UpstreamError, call_outcome


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    request: GenerationRequest
    started_at: datetime
    key_id: str
    request_id: str | None  # of the request that submitted the job, for the worker's lines
    # The trace the job's submit started (see app/core/tracing.py), if tracing was on.
    traceparent: str | None = None


CANDIDATES_PER_KEY = 16
# Waiting jobs are compared up to this many a key: beyond it, a key is flooding either way.
WAITING_COUNTED = 32
WORKER_LOST = "worker_lost"
WORKER_LOST_MESSAGE = "the worker running the job's attempt stopped before it ended"
CLAIM_ROUNDS = 3
_DATETIME = UTCDateTime()


def _due(now: datetime | ColumnElement[datetime]) -> tuple[ColumnElement[bool], ...]:
    """Queued, and past any retry's wait. The status is written out, not a parameter, so that
    the planners can use ``ix_jobs_queued_key``, whose condition it is."""
    return (
        Job.status == literal_column(f"'{JobStatus.QUEUED.value}'"),
        or_(Job.not_before.is_(None), Job.not_before <= now),
    )


def _due_in_key_order(
    now: ColumnElement[datetime], *, keys: ColumnElement[bool]
) -> Select[str, str]:
    """(key, id) of the due queued jobs (:func:`_due`) of the ``keys`` (a range), in the order
    of ``ix_jobs_queued_key``.

    A range of keys, never an equality: with an equality PostgreSQL may read the primary key
    in id order instead, hoping to meet the key's jobs early, and walk the whole history first
    (160 ms a claim at 100,000 queued behind 100,000 finished). The primary key cannot give
    this order, so the partial index is read from the range's first due job."""
    return select(Job.api_key_id, Job.id).where(*_due(now), keys).order_by(Job.api_key_id, Job.id)


def fairest_candidates(session: Session, *, now: datetime) -> list[str]:
    """Due queued jobs to try, fairest first: the key with the fewest jobs running now, then
    the fewest waiting (workers that free up together see equal running counts), then the
    oldest; and that key's oldest jobs.

    So a key that floods the queue cannot delay another key's lone job: the lone job's key has
    less running and less waiting, and comes first at the next dispatch. Waiting jobs are
    counted up to :data:`WAITING_COUNTED` a key, so two keys with at least that many waiting
    tie, and the older head goes first.

    The cost grows with the number of keys that have jobs due, never with the backlog: each
    such key is found by one index seek (a skip scan), and its running jobs, first due job and
    waiting count are bounded index reads.

    The statement is built once (:func:`_fairest_candidates_statement`): building it costs more
    than running it.
    """
    return list(session.scalars(_fairest_candidates_statement(), {"now": now}))


@cache
def _fairest_candidates_statement() -> Select[str]:
    now = bindparam("now", type_=_DATETIME)
    keys = _keys_with_due_jobs(now)
    key = keys.c.api_key_id
    # The key has a due job, so the first ones in key order are its own.
    from_key = _due_in_key_order(now, keys=Job.api_key_id >= key)
    head = from_key.with_only_columns(Job.id).limit(1).scalar_subquery()
    first_waiting = from_key.limit(WAITING_COUNTED).correlate(keys).subquery()
    waiting = (
        select(func.count())
        .select_from(first_waiting)
        .where(first_waiting.c.api_key_id == key)
        .scalar_subquery()
    )
    running = (
        select(func.count())
        .where(Job.api_key_id == key, Job.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    fairest = (
        select(key).where(key.is_not(None)).order_by(running, waiting, head).limit(1).cte("fairest")
    )
    fairest_key = select(fairest.c.api_key_id).scalar_subquery()
    # One statement, so the key and its jobs are read at one moment: read apart, another
    # worker could claim the key's last due job in between, and this message would find none
    # and give up with other keys' jobs still waiting (nothing due, it would conclude).
    candidates = (
        _due_in_key_order(now, keys=Job.api_key_id >= fairest_key)
        .limit(CANDIDATES_PER_KEY)
        .subquery()
    )
    return select(candidates.c.id).where(candidates.c.api_key_id == fairest_key)


def _keys_with_due_jobs(now: ColumnElement[datetime]) -> CTE:
    """Each key with a due job, each found by a seek for the first due job after the last key's
    (a skip scan of ``ix_jobs_queued_key``): as many seeks as such keys, however many jobs each
    has queued. The last row is NULL."""

    def first_key(keys: ColumnElement[bool]) -> ScalarSelect[str]:
        first = _due_in_key_order(now, keys=keys).with_only_columns(Job.api_key_id).limit(1)
        return first.scalar_subquery()

    due_keys = select(first_key(Job.api_key_id >= "").label("api_key_id")).cte(
        "due_keys", recursive=True
    )
    after = select(first_key(Job.api_key_id > due_keys.c.api_key_id))
    return due_keys.union_all(after.where(due_keys.c.api_key_id.is_not(None)))


def claim_next(session: Session, *, lease_seconds: float, slot_of: str) -> Claim | None:
    """Claim the fairest due job (see :func:`fairest_candidates`); ``None`` if none is left.

    A broker message is a dispatch slot, not a particular job: every job sent its own
    message, so every job is claimed by one of them. ``slot_of`` is the job this message was
    sent for. When it starts another job, that job's own message (if it has one) is still on its
    way and serves whichever job is left. If it has none (never sent: ``enqueued_at`` is NULL),
    one message is missing from then on: the claim sends one (through the outbox; marked as
    sent if ``slot_of`` still waits counted as having one), rather than leave a job to wait out
    REQUEUE_AFTER_SECONDS. Like every message, the new one starts whichever job is due.
    """
    for _ in range(CLAIM_ROUNDS):
        candidates = fairest_candidates(session, now=utcnow())
        if not candidates:
            return None
        # Threads picking at once would all race for the head: start at a random one.
        offset = random.randrange(len(candidates))
        for job_id in candidates[offset:] + candidates[:offset]:
            won = claim(session, job_id=job_id, lease_seconds=lease_seconds)
            if won is None:
                continue
            claimed, had_message = won
            if not had_message:
                # This message is spent on a job that was counted as having none: the job it
                # was sent for (if another) counts on one still, or, when the job was left to
                # the sweeper for another's lost message (message_lost), the job that counted
                # on that one does. A job left to the sweeper stays left: the message it had
                # is the one spent here.
                _recount(session, job_id=slot_of, enqueued_at=utcnow())
                outbox.add(session, outbox.ForwardJob(slot_of))
            return claimed
    return None


def message_lost(session: Session, *, job_id: str) -> str | None:
    """The broker refused the message sent for ``job_id`` (a dispatch slot): leave one queued
    job for the sweeper's next pass, by marking it as having no message. The job returned.

    That is ``job_id`` while it waits. If another job's message started it, the other job
    counts on this message (see :func:`claim_next`), so another job still counted as having
    one is marked instead, a due one first (the sweeper sends for due jobs only): the messages
    are interchangeable, and one too many only finds no job. Lost messages marking at once
    each mark their own job (PostgreSQL: a row another is marking is skipped).
    """
    if _recount(session, job_id=job_id, enqueued_at=None):
        return job_id
    counted = (
        select(Job.id)
        .where(Job.enqueued_at.is_not(None))
        .order_by(Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    for candidates in (
        counted.where(*_due(utcnow())),
        counted.where(Job.status == JobStatus.QUEUED),
    ):
        # Each pass ends: a job that cannot be marked any more is not found again.
        while (found := session.scalar(candidates)) is not None:
            if _recount(session, job_id=found, enqueued_at=None):
                return found
    return None  # every queued job is left for the sweeper already


def _recount(session: Session, *, job_id: str, enqueued_at: datetime | None) -> bool:
    """Set when a queued job's message was sent (``None``: it has none), if it counts as having
    one; a job left to the sweeper stays left. Whether it did."""
    marked = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None))
        .values(enqueued_at=enqueued_at)
        .execution_options(synchronize_session=False)
    )
    return rows_affected(marked) == 1


def claim(session: Session, *, job_id: str, lease_seconds: float) -> tuple[Claim, bool] | None:
    """Move a queued, due job to running under a lease; ``None`` if someone else has it. With
    the claim, whether the job had a message of its own sent (``enqueued_at``). The update
    returns what the attempt needs, so the job's row is not read again, nor its inputs when it
    has none."""
    now = utcnow()
    row = session.execute(
        _claim_statement(),
        {
            "job_id": job_id,
            "now": now,
            "lease_until": now + timedelta(seconds=lease_seconds),
        },
    ).one_or_none()
    if row is None:
        return None
    job_changed(session, job_id=job_id, status=JobStatus.RUNNING)
    spec = catalog.MODELS[row.model]
    inputs: Sequence[JobImage] = ()
    if row.input_image_count:
        inputs = session.scalars(
            select(JobImage)
            .where(JobImage.job_id == job_id, JobImage.role == "input")
            .order_by(JobImage.position)
        ).all()
    claimed = Claim(
        job_id=job_id,
        attempt=row.attempts,
        started_at=now,
        key_id=row.api_key_id,
        request_id=row.request_id,
        traceparent=row.traceparent,
        request=GenerationRequest(
            upstream_model=spec.upstream_id,
            prompt=row.prompt,
            width=row.width,
            height=row.height,
            seed=row.seed,
            guidance=row.guidance,
            steps=row.steps if spec.steps_configurable else None,
            input_images=tuple(
                InputImage(data=_stored(image), content_type=image.content_type) for image in inputs
            ),
        ),
    )
    return claimed, row.enqueued_at is not None


@cache
def _claim_statement() -> Update:
    """Built once, as the claim runs for every job: building it cost more than running it."""
    now = bindparam("now", type_=_DATETIME)
    return (
        update(Job)
        .where(Job.id == bindparam("job_id"), *_due(now))
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            lease_expires_at=bindparam("lease_until", type_=_DATETIME),
            started_at=func.coalesce(Job.started_at, now),
            not_before=None,
        )
        .returning(
            Job.attempts,
            Job.api_key_id,
            Job.model,
            Job.prompt,
            Job.width,
            Job.height,
            Job.seed,
            Job.guidance,
            Job.steps,
            Job.input_image_count,
            Job.request_id,
            Job.traceparent,
            Job.enqueued_at,
        )
        .execution_options(synchronize_session=False)
    )


def _stored(image: JobImage) -> bytes:
    # Retention deletes only the images of jobs that have completed.
    assert image.data is not None, f"input image of job {image.job_id} has no bytes"
    return image.data


def _update_attempt(session: Session, claim: Claim, **values: object) -> Job | None:
    """Apply ``values`` only if the job is still in the attempt this claim made (nobody swept
    or finished it since): the job as the update left it (returned by it, not read again), or
    ``None`` if this attempt lost."""
    return session.scalars(_in_attempt(claim.job_id, claim.attempt).values(**values)).one_or_none()


def _in_attempt(job_id: str | BindParameter[str], attempt: int | BindParameter[int]) -> Update:
    """An update of the job that applies only while it is in this attempt; it returns the job."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )


@cache
def _succeeded_statement() -> Update:
    """:func:`_update_attempt` for a success, built once: it runs for every job."""
    return _in_attempt(bindparam("job_id"), bindparam("attempt")).values(
        status=JobStatus.SUCCEEDED,
        completed_at=bindparam("ended_at", type_=_DATETIME),
        charged_nanos=Job.estimated_nanos,
        lease_expires_at=None,
        upstream_neurons=bindparam("neurons", type_=String()),
        upstream_ms=bindparam("spent_ms", type_=Integer()),
        error_code=None,
        error_message=None,
        error_upstream_code=None,
    )


def finish_succeeded(
    session: Session,
    *,
    claim: Claim,
    image: bytes,
    info: ImageInfo,
    neurons: str | None,
    upstream_ms: int,
    public_url: str | None,
) -> bool:
    """Store the image, the charge and the status together; ``False`` if this attempt lost.
    ``public_url``: for the links in the job's webhook event."""
    job = session.scalars(
        _succeeded_statement(),
        {
            "job_id": claim.job_id,
            "attempt": claim.attempt,
            "ended_at": utcnow(),
            "neurons": neurons,
            "spent_ms": upstream_ms,
        },
    ).one_or_none()
    if job is None:
        return False
    _record_attempt(session, claim, outcome="succeeded", upstream_ms=upstream_ms, http_status=200)
    session.execute(
        insert_into(JobImage),
        {
            "job_id": job.id,
            "role": "output",
            "position": 0,
            "content_type": info.content_type,
            "width": info.width,
            "height": info.height,
            "size_bytes": info.size_bytes,
            "sha256": info.sha256,
            "data": image,
        },
    )
    record_charge(
        session,
        job_id=job.id,
        api_key_id=job.api_key_id,
        model=job.model,
        price_id=job.price_id,
        amount_nanos=job.estimated_nanos,
    )
    # The output block shows what was just checked and stored: not read back.
    job_ended(session, job=job, public_url=public_url, output=info)
    _count_charge(session, job=job)
    return True


def _count_charge(session: Session, *, job: Job) -> None:
    outbox.add(
        session, outbox.Counted(metrics.CHARGED_NANOS, (job.model,), float(job.estimated_nanos))
    )
    try:
        neurons = float(job.upstream_neurons) if job.upstream_neurons else 0.0
    except ValueError:
        neurons = 0.0  # a header we cannot read is kept on the job as it came, not counted
    if neurons > 0 and neurons != float("inf"):
        outbox.add(session, outbox.Counted(metrics.UPSTREAM_NEURONS, (job.model,), neurons))


def _record_attempt(
    session: Session,
    claim: Claim,
    *,
    outcome: str,
    upstream_ms: int | None,
    http_status: int | None,
    error: UpstreamError | None = None,
) -> None:
    _insert_attempt(
        session,
        job_id=claim.job_id,
        number=claim.attempt,
        started_at=claim.started_at,
        outcome=outcome,
        upstream_ms=upstream_ms,
        http_status=http_status,
        error_code=None if error is None else error.code,
        upstream_code=None if error is None else error.upstream_code,
    )


def _insert_attempt(session: Session, **values: object) -> None:
    """An attempt's row, ended now unless ``values`` say when, by a plain INSERT: a unit of
    work for one row costs the worker more than the statement."""
    session.execute(insert_into(JobAttempt), {"ended_at": utcnow(), **values})


def _record_failed_attempt(
    session: Session, claim: Claim, *, outcome: str, error: UpstreamError
) -> None:
    _record_attempt(
        session,
        claim,
        outcome=outcome,
        upstream_ms=error.duration_ms,
        http_status=error.http_status,
        error=error,
    )


def _attempt_error(error: UpstreamError) -> dict[str, object]:
    """What a failed attempt records on the job."""
    return {
        "upstream_ms": error.duration_ms,
        "error_code": error.code,
        "error_message": error.message[:1000],
        "error_upstream_code": error.upstream_code,
    }


def schedule_retry(
    session: Session, *, claim: Claim, error: UpstreamError, delay_seconds: float
) -> bool:
    """Back to queued, due after ``delay_seconds``; cancelable again while it waits."""
    now = utcnow()
    queued = _update_attempt(
        session,
        claim,
        status=JobStatus.QUEUED,
        lease_expires_at=None,
        not_before=now + timedelta(seconds=delay_seconds),
        enqueued_at=now,
        # Kept for operators; the Job shows an error only once it has failed.
        **_attempt_error(error),
    )
    if queued is not None:
        _record_failed_attempt(session, claim, outcome="retrying", error=error)
        model = catalog.model_name(claim.request.upstream_model)
        outbox.add(session, outbox.Counted(metrics.JOB_RETRIES, (model, call_outcome(error))))
        job_changed(session, job_id=claim.job_id, status=JobStatus.QUEUED)
        outbox.add(session, outbox.ForwardJob(claim.job_id, countdown=delay_seconds))
    return queued is not None


def finish_failed(
    session: Session, *, claim: Claim, error: UpstreamError, public_url: str | None
) -> bool:
    """A final failure costs nothing."""
    failed = _update_attempt(
        session,
        claim,
        status=JobStatus.FAILED,
        completed_at=utcnow(),
        charged_nanos=0,
        lease_expires_at=None,
        **_attempt_error(error),
    )
    if failed is not None:
        _record_failed_attempt(session, claim, outcome="failed", error=error)
        job_ended(session, job=failed, public_url=public_url)
    return failed is not None


def _job_failed(session: Session, job_id: str, *, public_url: str | None) -> None:
    job = session.get_one(Job, job_id, populate_existing=True)
    job_ended(session, job=job, public_url=public_url)


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> float:
    """Capped exponential backoff with jitter; a ``Retry-After`` is a floor, not a suggestion."""
    rng = rng or random.Random()
    exponential = min(cap, base * 2.0 ** (attempt - 1))
    # "Equal jitter": at least half the step, so retries never bunch at zero.
    delay = exponential / 2 + rng.uniform(0, exponential / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap) + rng.uniform(0, 0.1 * base))
    return delay


def _record_lost_attempt(session: Session, *, job_id: str, now: datetime) -> None:
    """The attempt whose worker stopped: only its lease's expiry was seen."""
    number = session.scalar(select(Job.attempts).where(Job.id == job_id))
    _insert_attempt(
        session,
        job_id=job_id,
        number=number,
        started_at=None,
        ended_at=now,
        outcome="lost",
        upstream_ms=None,
        http_status=None,
        error_code=WORKER_LOST,
        upstream_code=None,
    )


@dataclass(frozen=True)
class SweepResult:
    requeued_expired: list[str]
    failed_expired: list[str]
    resent: list[str]


def sweep(
    session: Session,
    *,
    requeue_after_seconds: float,
    max_attempts: int,
    public_url: str | None,
    batch: int = 500,
    now: datetime | None = None,
) -> SweepResult:
    """Find work nobody is doing: running jobs whose lease ran out (the worker died), and
    queued jobs whose broker message has not been seen for a while (lost or never sent).
    ``public_url``: for the links in the webhook events of jobs that fail here.

    Each job found gets a message through the outbox, sent once the caller commits.
    """
    now = now or utcnow()
    expired = list(
        session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            .limit(batch)
        )
    )
    requeued: list[str] = []
    failed: list[str] = []
    for job_id in expired:
        lease_expired = (
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at < now,
        )
        exhausted = session.execute(
            update(Job)
            .where(*lease_expired, Job.attempts >= max_attempts)
            .values(
                status=JobStatus.FAILED,
                completed_at=now,
                charged_nanos=0,
                lease_expires_at=None,
                error_code="attempts_exhausted",
                error_message="the job's worker stopped on every attempt",
                error_upstream_code=None,
            )
            .execution_options(synchronize_session=False)
        )
        if rows_affected(exhausted) == 1:
            _record_lost_attempt(session, job_id=job_id, now=now)
            _job_failed(session, job_id, public_url=public_url)
            failed.append(job_id)
            continue
        back = session.execute(
            update(Job)
            .where(*lease_expired)
            .values(
                status=JobStatus.QUEUED,
                lease_expires_at=None,
                not_before=None,
                enqueued_at=now,
                # Why it waits again, for the Job's last_error.
                error_code=WORKER_LOST,
                error_message=WORKER_LOST_MESSAGE,
                error_upstream_code=None,
            )
            .execution_options(synchronize_session=False)
        )
        if rows_affected(back) == 1:
            _record_lost_attempt(session, job_id=job_id, now=now)
            job_changed(session, job_id=job_id, status=JobStatus.QUEUED)
            requeued.append(job_id)

    stale_before = now - timedelta(seconds=requeue_after_seconds)
    stale_query = (
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_before),
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .order_by(Job.id)
        .limit(batch)
    )
    # Every job that needs a message gets one in this pass, a batch at a time (a batch marked
    # as sent is not stale any more). Whichever job each message then starts, none is left
    # waiting (see claim_next).
    stale: list[str] = []
    while batch_ids := list(session.scalars(stale_query)):
        session.execute(
            update(Job)
            .where(Job.id.in_(batch_ids), Job.status == JobStatus.QUEUED)
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        stale.extend(batch_ids)
    for job_id in requeued + stale:
        outbox.add(session, outbox.ForwardJob(job_id))
    return SweepResult(requeued_expired=requeued, failed_expired=failed, resent=requeued + stale)

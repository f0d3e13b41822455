"""Where a job's time went: waiting in the queue, in the upstream call, and in the gateway
itself (claiming, checking and storing the image, writing the outcome, a lost worker's lease).

Worked out from the job and its attempt rows (app/jobs/models.py: JobAttempt); nothing is
stored twice. A job that ran once needs only its own row; a retried job's sums need its
attempts, and are shown once it has ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.jobs.models import FINAL_STATUSES, Job, JobAttempt, JobStatus


@dataclass(frozen=True)
class Timings:
    queue_ms: int | None
    upstream_ms: int | None
    overhead_ms: int | None


@dataclass(frozen=True)
class AttemptTiming:
    number: int
    # Queued before it started (after the job's creation or the previous attempt's end); None
    # for an attempt whose worker was lost, whose start was never recorded.
    queue_ms: int | None
    upstream_ms: int | None
    # Its own time outside the upstream call (for a lost attempt: all of it).
    overhead_ms: int | None


UNKNOWN = Timings(None, None, None)


def _ms(later: datetime, earlier: datetime) -> int:
    return max(0, round((later - earlier).total_seconds() * 1000))


def needs_attempts(job: Job) -> bool:
    """Whether :func:`job_timings` needs the job's attempt rows."""
    return job.attempts > 1 and JobStatus(job.status) in FINAL_STATUSES


def attempt_timings(job: Job, attempts: Sequence[JobAttempt]) -> list[AttemptTiming]:
    timings = []
    previous = job.created_at
    for attempt in sorted(attempts, key=lambda a: a.number):
        if attempt.started_at is None:
            timings.append(
                AttemptTiming(attempt.number, None, None, _ms(attempt.ended_at, previous))
            )
        else:
            upstream = attempt.upstream_ms or 0
            timings.append(
                AttemptTiming(
                    attempt.number,
                    _ms(attempt.started_at, previous),
                    attempt.upstream_ms,
                    max(0, _ms(attempt.ended_at, attempt.started_at) - upstream),
                )
            )
        previous = attempt.ended_at
    return timings


def job_timings(job: Job, attempts: Sequence[JobAttempt] = ()) -> Timings:
    """The Job's ``timings``: known in part once it started, in full once it ended (for a
    retried job, from ``attempts``, which :func:`needs_attempts` says to load)."""
    if job.started_at is None:
        return UNKNOWN
    ended = job.completed_at if JobStatus(job.status) in FINAL_STATUSES else None
    if job.attempts <= 1:
        queue = _ms(job.started_at, job.created_at)
        if ended is None:
            return Timings(queue, None, None)
        upstream = job.upstream_ms
        return Timings(queue, upstream, max(0, _ms(ended, job.started_at) - (upstream or 0)))
    if ended is None or not attempts:
        return UNKNOWN  # a retried job's sums are given once it has ended
    parts = attempt_timings(job, attempts)
    queue = sum(part.queue_ms or 0 for part in parts)
    upstream = sum(part.upstream_ms or 0 for part in parts)
    return Timings(queue, upstream, max(0, _ms(ended, job.created_at) - queue - upstream))


def server_timing(*, queue_ms: int | None, upstream_ms: int | None, overhead_ms: int | None) -> str:
    """A ``Server-Timing`` header value for a finished job (durations in milliseconds), so a
    browser's or client's tooling shows where the wait went."""
    parts = [
        ("queue", queue_ms, "waiting for a worker"),
        ("upstream", upstream_ms, "Workers AI"),
        ("overhead", overhead_ms, "the gateway"),
    ]
    return ", ".join(
        f'{name};dur={value};desc="{desc}"' for name, value, desc in parts if value is not None
    )

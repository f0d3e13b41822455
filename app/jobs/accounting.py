"""What a job takes from its key while it lives, and gives back when it ends: its budget hold
and its concurrency slot. One place for both, used at submit and at every end of a job.

A slot is not a counter: the jobs a key has queued or running are counted from ``jobs`` where
the key has a limit, so a job that ends gives its slot back by ending (no write), and a key
without a limit neither counts nor locks anything. A counter on the key's row made every job
of a key, limited or not, wait on that one row at submit and again at finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.billing import budgets
from app.core import metrics
from app.jobs.models import ACTIVE_STATUSES, Job
from app.keys.limits import RateLimited
from app.keys.models import ApiKey


def admit(session: Session, *, api_key: ApiKey, amount_nanos: int, at: datetime) -> datetime | None:
    """Take a concurrency slot and hold the cost; the budget period held in (or ``None``)."""
    take_slot(session, api_key=api_key)
    return budgets.hold(session, api_key=api_key, amount_nanos=amount_nanos, at=at)


def take_slot(session: Session, *, api_key: ApiKey) -> None:
    """Room for one more job queued or running for the key; 429 when its limit is reached.

    The key's limited submissions take turns on its row (a write, which SQLite serialises too,
    where ``FOR UPDATE`` does not exist), so the count here and the job the caller inserts are
    one step: concurrent submissions never exceed the limit. The turn also reads the limit as
    it is now, should an admin have changed it since the key was authenticated.
    """
    if api_key.max_concurrent_jobs is None:
        return
    limit = session.scalar(
        update(ApiKey)
        .where(ApiKey.id == api_key.id)
        .values(max_concurrent_jobs=ApiKey.max_concurrent_jobs)
        .returning(ApiKey.max_concurrent_jobs)
        .execution_options(synchronize_session=False)
    )
    if limit is None:
        return
    if active_jobs(session, api_key_ids=[api_key.id])[api_key.id] >= limit:
        metrics.SUBMISSIONS_REFUSED.labels("max_concurrent_jobs").inc()
        raise RateLimited(
            f"this key may have {limit} jobs queued or running at once; "
            "try again when one has finished",
            headers={"Retry-After": "1"},
        )


def active_jobs(session: Session, *, api_key_ids: Sequence[str]) -> dict[str, int]:
    """How many jobs each key has queued or running now (an index range per key)."""
    counts = dict.fromkeys(api_key_ids, 0)
    if api_key_ids:
        rows = session.execute(
            select(Job.api_key_id, func.count())
            .where(Job.api_key_id.in_(api_key_ids), Job.status.in_(ACTIVE_STATUSES))
            .group_by(Job.api_key_id)
        )
        counts.update({key_id: int(count) for key_id, count in rows})
    return counts


def job_ended(session: Session, *, job: Job, succeeded: bool) -> None:
    """The hold becomes the charge (success) or goes back (failure, cancel). The job's slot
    needs nothing: it is free once the job's status is final."""
    settle = budgets.settle if succeeded else budgets.release
    settle(
        session,
        api_key_id=job.api_key_id,
        start=job.budget_period_start,
        amount_nanos=job.estimated_nanos,
    )

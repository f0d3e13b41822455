"""What a job takes from its key while it lives, and gives back when it ends: its budget hold
and its concurrency slot. One place for both, used at submit and at every end of a job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.billing import budgets
from app.jobs.models import Job
from app.keys import limits
from app.keys.models import ApiKey


def admit(session: Session, *, api_key: ApiKey, amount_nanos: int, at: datetime) -> datetime | None:
    """Take a concurrency slot and hold the cost; the budget period held in (or ``None``)."""
    limits.take_slot(session, api_key=api_key)
    return budgets.hold(session, api_key=api_key, amount_nanos=amount_nanos, at=at)


def job_ended(session: Session, *, job: Job, succeeded: bool) -> None:
    """The hold becomes the charge (success) or goes back (failure, cancel); the slot frees."""
    settle = budgets.settle if succeeded else budgets.release
    settle(
        session,
        api_key_id=job.api_key_id,
        start=job.budget_period_start,
        amount_nanos=job.estimated_nanos,
    )
    limits.free_slot(session, api_key_id=job.api_key_id)

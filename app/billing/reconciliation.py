"""Reconciliation with the upstream: per UTC day, what the ledger charged against what the
neurons Workers AI reported imply ($0.011 per 1,000 neurons = 11,000 nano-USD per neuron), and
the jobs where the two differ.

Days below the rollup's watermark are read from ``usage_hours`` (which keeps, per hour, the
jobs with reported neurons, their implied cost and their charges); the rest from the ledger,
with the same SQL for the implied cost (app/billing/rollup.py:implied_nanos_sql), so the
numbers are the same whichever source a day comes from. Integers throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import case, func, select, type_coerce
from sqlalchemy.orm import Session

from app.billing.models import Charge, UsageHour
from app.billing.rollup import hour_of, implied_nanos_sql, watermark
from app.core.errors import InvalidParameter
from app.core.orm import UTCDateTime
from app.jobs.models import Job

MAX_DAYS = 366
MAX_MISMATCHES = 1000


@dataclass(frozen=True)
class ReconciliationDay:
    day: date  # UTC
    jobs: int  # charged jobs
    charged_nanos: int  # the ledger, every charged job
    jobs_with_neurons: int
    jobs_without_neurons: int
    neuron_charged_nanos: int  # the ledger, the jobs with reported neurons
    implied_nanos: int  # what their neurons imply

    @property
    def difference_nanos(self) -> int:
        """Charged minus implied, over the jobs whose neurons were reported (0: agreed)."""
        return self.neuron_charged_nanos - self.implied_nanos


@dataclass(frozen=True)
class Mismatch:
    job_id: str
    api_key_id: str
    model: str
    charged_at: datetime
    charged_nanos: int
    neurons: str
    implied_nanos: int


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def reconcile_days(session: Session, *, first_day: date, last_day: date) -> list[ReconciliationDay]:
    """Every UTC day from ``first_day`` to ``last_day`` (both included), days without charges
    too, oldest first."""
    if last_day < first_day:
        raise InvalidParameter("to must not be before from", param="to")
    if (last_day - first_day).days >= MAX_DAYS:
        raise InvalidParameter(f"at most {MAX_DAYS} days at a time", param="to")
    start, end = _midnight(first_day), _midnight(last_day + timedelta(days=1))
    rolled_until = min(max(watermark(session) or start, start), end)
    sums: dict[date, list[int]] = {
        first_day + timedelta(days=n): [0] * 5 for n in range((last_day - first_day).days + 1)
    }

    def add(hour: datetime, values: tuple[int, ...]) -> None:
        found = sums[hour.astimezone(UTC).date()]
        for index, value in enumerate(values):
            found[index] += int(value)

    if start < rolled_until:
        rolled = (
            select(
                UsageHour.hour_start,
                func.sum(UsageHour.jobs),
                func.sum(UsageHour.charged_nanos),
                func.sum(UsageHour.neuron_jobs),
                func.sum(UsageHour.neuron_charged_nanos),
                func.sum(UsageHour.implied_nanos),
            )
            .where(UsageHour.hour_start >= start, UsageHour.hour_start < rolled_until)
            .group_by(UsageHour.hour_start)
        )
        for hour, *values in session.execute(rolled):
            add(hour, tuple(values))
    if rolled_until < end:
        dialect = session.get_bind().dialect.name
        hour_expr = type_coerce(hour_of(Charge.created_at, dialect), UTCDateTime)
        implied = implied_nanos_sql(Job.upstream_neurons, dialect)
        raw = (
            select(
                hour_expr,
                func.count(Charge.id),
                func.coalesce(func.sum(Charge.amount_nanos), 0),
                func.count(implied),
                func.coalesce(
                    func.sum(case((implied.is_not(None), Charge.amount_nanos), else_=0)), 0
                ),
                func.coalesce(func.sum(implied), 0),
            )
            .join(Job, Job.id == Charge.job_id)
            .where(Charge.created_at >= rolled_until, Charge.created_at < end)
            .group_by(hour_expr)
        )
        for hour, *values in session.execute(raw):
            add(hour, tuple(values))
    return [
        ReconciliationDay(
            day=day,
            jobs=jobs,
            charged_nanos=charged,
            jobs_with_neurons=with_neurons,
            jobs_without_neurons=jobs - with_neurons,
            neuron_charged_nanos=neuron_charged,
            implied_nanos=implied_total,
        )
        for day, (jobs, charged, with_neurons, neuron_charged, implied_total) in sorted(
            sums.items()
        )
    ]


# Workers AI reports neurons to two decimals: up to this much a job (0.005 neuron) is rounding.
ROUNDING_NANOS = 55


def mismatches(
    session: Session, *, day: date, limit: int = 100, tolerance_nanos: int = 0
) -> list[Mismatch]:
    """The jobs charged on ``day`` (UTC) whose charge differs from what their reported neurons
    imply by more than ``tolerance_nanos``, newest charge first (jobs without reported neurons
    are not listed). Workers AI reports neurons to two decimals, so a job can be off by up to
    55 nano-USD (0.005 neuron) from rounding alone; pass ``tolerance_nanos=55`` to see only
    real differences."""
    if not 1 <= limit <= MAX_MISMATCHES:
        raise InvalidParameter(f"limit must be 1..{MAX_MISMATCHES}", param="limit")
    if tolerance_nanos < 0:
        raise InvalidParameter("tolerance must not be negative", param="tolerance")
    start = _midnight(day)
    implied = implied_nanos_sql(Job.upstream_neurons, session.get_bind().dialect.name)
    query = (
        select(
            Charge.job_id,
            Charge.api_key_id,
            Charge.model,
            Charge.created_at,
            Charge.amount_nanos,
            Job.upstream_neurons,
            implied,
        )
        .join(Job, Job.id == Charge.job_id)
        .where(
            Charge.created_at >= start,
            Charge.created_at < start + timedelta(days=1),
            implied.is_not(None),
            func.abs(implied - Charge.amount_nanos) > tolerance_nanos,
        )
        .order_by(Charge.created_at.desc(), Charge.id.desc())
        .limit(limit)
    )
    return [
        Mismatch(
            job_id=job_id,
            api_key_id=key_id,
            model=model,
            charged_at=at,
            charged_nanos=int(charged),
            neurons=str(neurons),
            implied_nanos=int(implied_value),
        )
        for job_id, key_id, model, at, charged, neurons, implied_value in session.execute(query)
    ]

"""What each page shows, read through the domains' services and models: one function per page
(or panel), each a handful of queries, none proportional to the number of jobs shown."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Float, and_, case, cast, func, select
from sqlalchemy.orm import Session

from app.billing import budgets, usage
from app.billing.models import Charge, Price
from app.billing.rollup import NANOS_PER_NEURON
from app.billing.rules import Breakdown, breakdown
from app.core.errors import NotFound
from app.core.ids import id_floor
from app.jobs import retention
from app.jobs.models import ACTIVE_STATUSES, Job, JobAttempt, JobImage, JobStatus
from app.jobs.timings import Timings, attempt_timings, job_timings
from app.keys.models import ApiKey
from app.webhooks import service as webhooks
from app.webhooks.schemas import DeliveryOut

# ---- overview ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class Health:
    """The last 24 hours of jobs and upstream attempts."""

    statuses: dict[str, int]
    failure_rate: float | None  # failed / (succeeded + failed)
    attempts: int
    rate_429: float | None
    rate_5xx: float | None
    queue_wait_ms: Percentiles
    upstream_ms: Percentiles
    overhead_ms: Percentiles
    queued_now: int
    running_now: int


def _ms_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", end - start) * 1000.0, Float)
    return cast((func.julianday(end) - func.julianday(start)) * 86_400_000.0, Float)


def _percentiles(
    session: Session, measures: list[tuple[ColumnElement[Any], ColumnElement[bool]]], *where: Any
) -> list[Percentiles]:
    """p50 and p95 of each ``(value, condition)`` over the rows matching ``where``, in one
    pass: in the database where it can (PostgreSQL), else over the fetched values (SQLite, the
    embedded default's scale)."""
    if session.get_bind().dialect.name == "postgresql":
        columns = [
            func.percentile_cont(fraction).within_group(value).filter(condition)
            for value, condition in measures
            for fraction in (0.5, 0.95)
        ]
        row = session.execute(select(*columns).where(*where)).one()
        found = [None if value is None else float(value) for value in row]
        return [Percentiles(found[i], found[i + 1]) for i in range(0, len(found), 2)]
    picked = [case((condition, value), else_=None) for value, condition in measures]
    rows = session.execute(select(*picked).where(*where)).all()
    results = []
    for index in range(len(measures)):
        values = sorted(float(row[index]) for row in rows if row[index] is not None)
        if not values:
            results.append(Percentiles(None, None))
        elif len(values) == 1:
            results.append(Percentiles(values[0], values[0]))
        else:
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            results.append(Percentiles(p50=statistics.median(values), p95=cuts[94]))
    return results


def health(session: Session, *, now: datetime) -> Health:
    since = now - timedelta(hours=24)
    recent = Job.id >= id_floor("job", int(since.timestamp() * 1000))
    statuses = {
        str(status): int(count)
        for status, count in session.execute(
            select(Job.status, func.count()).where(recent).group_by(Job.status)
        )
    }
    finished = statuses.get("succeeded", 0) + statuses.get("failed", 0)
    attempts_row = session.execute(
        select(
            func.count(),
            func.sum(case((JobAttempt.http_status == 429, 1), else_=0)),
            func.sum(case((JobAttempt.http_status >= 500, 1), else_=0)),
        ).where(JobAttempt.ended_at >= since)
    ).one()
    attempts = int(attempts_row[0])
    started = Job.started_at.is_not(None)
    succeeded_once = and_(
        Job.status == JobStatus.SUCCEEDED, Job.attempts == 1, Job.upstream_ms.is_not(None)
    )
    queue_wait = _ms_between(session, Job.created_at, Job.started_at)
    total = _ms_between(session, Job.created_at, Job.completed_at)
    upstream = cast(Job.upstream_ms, Float)
    waits, upstreams, overheads = _percentiles(
        session,
        [
            (queue_wait, started),
            (upstream, succeeded_once),
            (total - queue_wait - upstream, succeeded_once),
        ],
        recent,
    )
    backlog = dict(
        session.execute(
            select(Job.status, func.count())
            .where(Job.status.in_(ACTIVE_STATUSES))
            .group_by(Job.status)
        ).all()
    )
    return Health(
        statuses=statuses,
        failure_rate=None if finished == 0 else statuses.get("failed", 0) / finished,
        attempts=attempts,
        rate_429=None if attempts == 0 else int(attempts_row[1] or 0) / attempts,
        rate_5xx=None if attempts == 0 else int(attempts_row[2] or 0) / attempts,
        queue_wait_ms=waits,
        upstream_ms=upstreams,
        overhead_ms=overheads,
        queued_now=int(backlog.get(JobStatus.QUEUED, 0)),
        running_now=int(backlog.get(JobStatus.RUNNING, 0)),
    )


@dataclass(frozen=True)
class BudgetUse:
    key: ApiKey
    used_nanos: int
    budget_nanos: int
    percent: int  # 0..100, for the bar
    runs_out: datetime | None  # at this period's pace, if within the period


def budget_uses(session: Session, *, now: datetime) -> list[BudgetUse]:
    """Every live key with a budget: used (held + charged) this period, and when the budget
    runs out if spending goes on at this period's average pace."""
    keys = list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.revoked_at.is_(None), ApiKey.budget_nanos.is_not(None))
            .order_by(ApiKey.name, ApiKey.id)
        )
    )
    used_of = budgets.used_nanos(session, api_keys=keys, at=now)
    uses = []
    for key in keys:
        budget = key.budget_nanos or 0
        used = used_of[key.id]
        start = budgets.period_start(key, now)
        runs_out = None
        elapsed = (now - start).total_seconds()
        if 0 < used < budget and elapsed > 0 and key.budget_period == "month":
            seconds_left = (budget - used) / (used / elapsed)
            candidate = now + timedelta(seconds=seconds_left)
            end = (start + timedelta(days=32)).replace(day=1)
            runs_out = candidate if candidate < end else None
        uses.append(
            BudgetUse(
                key=key,
                used_nanos=used,
                budget_nanos=budget,
                percent=min(100, used * 100 // budget) if budget else 0,
                runs_out=runs_out,
            )
        )
    return uses


# ---- keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    used_nanos: int
    jobs_this_month: int
    last_used: datetime | None


def key_rows(session: Session, *, now: datetime) -> list[KeyRow]:
    """Every key, live first, with what it used of its budget this period, its charged jobs this
    month (from the same report as Usage) and when it last submitted a job."""
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    # The newest job of each key, through the (api_key_id, id) index: one probe per key.
    last_used = (
        select(Job.created_at)
        .where(Job.api_key_id == ApiKey.id)
        .order_by(Job.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    keys = session.execute(
        select(ApiKey, last_used).order_by(ApiKey.revoked_at.is_not(None), ApiKey.name, ApiKey.id)
    ).all()
    used = budgets.used_nanos(session, api_keys=[key for key, _ in keys], at=now)
    charged = {
        row.group: row.jobs
        for row in usage.usage(session, start=month, end=now + timedelta(seconds=1), group_by="key")
    }
    rows = []
    for key, last in keys:
        rows.append(
            KeyRow(
                key=key,
                used_nanos=used[key.id],
                jobs_this_month=charged.get(key.id, 0),
                last_used=last,
            )
        )
    return rows


# ---- one job -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """How the job's price was reached from the price row that was applied, beside what the
    upstream reported in neurons."""

    price: Price
    bill: Breakdown
    charged_nanos: int | None
    neurons: str | None
    neurons_nanos: int | None


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime | None
    label: str
    detail: str = ""
    duration_ms: float | None = None
    # An attempt's own time outside the upstream call.
    overhead_ms: float | None = None


@dataclass(frozen=True)
class JobPage:
    job: Job
    key: ApiKey
    explanation: Explanation
    timeline: list[TimelineEntry]
    timings: Timings
    output: JobImage | None
    inputs: list[JobImage]
    deliveries: list[DeliveryOut]
    charge: Charge | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def explain(job: Job, price: Price, *, input_sizes: list[tuple[int, int]]) -> Explanation:
    bill = breakdown(
        price.schedule(),
        width=job.width,
        height=job.height,
        steps=job.steps,
        input_sizes=input_sizes,
    )
    neurons_nanos = None
    if job.upstream_neurons is not None:
        try:
            neurons_nanos = round(Decimal(job.upstream_neurons) * NANOS_PER_NEURON)
        except ArithmeticError:
            neurons_nanos = None
    return Explanation(
        price=price,
        bill=bill,
        charged_nanos=job.charged_nanos,
        neurons=job.upstream_neurons,
        neurons_nanos=neurons_nanos,
    )


def _timeline(job: Job, attempts: list[JobAttempt]) -> list[TimelineEntry]:
    entries = [TimelineEntry(at=job.created_at, label="created")]
    for attempt, spent in zip(attempts, attempt_timings(job, attempts), strict=True):
        wait = spent.queue_ms
        detail = attempt.outcome
        if attempt.error_code:
            detail += f" · {attempt.error_code}"
        if attempt.http_status is not None:
            detail += f" · HTTP {attempt.http_status}"
        if attempt.upstream_code is not None:
            detail += f" · Workers AI {attempt.upstream_code}"
        entries.append(
            TimelineEntry(
                at=attempt.started_at,
                label=f"attempt {attempt.number} started",
                detail="" if wait is None else f"after waiting {wait:.0f} ms",
            )
        )
        entries.append(
            TimelineEntry(
                at=attempt.ended_at,
                label=f"attempt {attempt.number} ended",
                detail=detail,
                duration_ms=attempt.upstream_ms,
                overhead_ms=spent.overhead_ms,
            )
        )
    if job.status == JobStatus.RUNNING:
        entries.append(TimelineEntry(at=None, label=f"attempt {job.attempts} in progress"))
    if job.completed_at is not None:
        entries.append(
            TimelineEntry(
                at=job.completed_at,
                label=job.status,
                detail=f"{(job.completed_at - job.created_at).total_seconds() * 1000:.0f} ms "
                "after it was created",
            )
        )
    return entries


def job_page(session: Session, *, job: Job) -> JobPage:
    images = list(
        session.scalars(
            select(JobImage)
            .where(JobImage.job_id == job.id)
            .order_by(JobImage.role, JobImage.position)
        )
    )
    inputs = [image for image in images if image.role == "input"]
    output = next((image for image in images if image.role == "output"), None)
    attempts = list(
        session.scalars(
            select(JobAttempt).where(JobAttempt.job_id == job.id).order_by(JobAttempt.number)
        )
    )
    price = session.get_one(Price, job.price_id)
    deliveries = webhooks.to_delivery_out(
        session, webhooks.deliveries_of_job(session, job_id=job.id)
    )
    return JobPage(
        job=job,
        key=session.get_one(ApiKey, job.api_key_id),
        explanation=explain(job, price, input_sizes=[(i.width, i.height) for i in inputs]),
        timeline=_timeline(job, attempts),
        timings=job_timings(job, attempts),
        output=output,
        inputs=inputs,
        deliveries=deliveries,
        charge=session.scalar(select(Charge).where(Charge.job_id == job.id)),
    )


# ---- spend -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpend:
    model: str
    jobs: int
    output_tiles: int
    charged_nanos: int


@dataclass(frozen=True)
class Spend:
    today_nanos: int
    month_nanos: int
    last_30_days_nanos: int
    by_model: list[ModelSpend]  # the last 30 days


def spend(session: Session, *, now: datetime) -> Spend:
    """Charged USD today and this month (UTC), and in the last 30 UTC days by model: one read
    of the days' sums (the rollup, and the ledger past it)."""
    today = now.astimezone(UTC).date()
    month = today.replace(day=1)
    thirty = today - timedelta(days=29)
    days = usage.daily_spend(session, first_day=min(month, thirty), last_day=today, split="model")
    models: dict[str, list[int]] = {}
    for day in days:
        if day.day >= thirty:
            sums = models.setdefault(day.name, [0, 0, 0])
            sums[0] += day.jobs
            sums[1] += day.output_tiles
            sums[2] += day.charged_nanos
    return Spend(
        today_nanos=sum(day.charged_nanos for day in days if day.day == today),
        month_nanos=sum(day.charged_nanos for day in days if day.day >= month),
        last_30_days_nanos=sum(day.charged_nanos for day in days if day.day >= thirty),
        by_model=[ModelSpend(model, *sums) for model, sums in sorted(models.items())],
    )


CHART_DAYS = (7, 30, 90)


def spend_chart(
    session: Session, *, now: datetime, days: int, split: Literal["model", "key"]
) -> dict[str, Any]:
    """Spend per UTC day over the last ``days`` days, one series per model (or key), for
    uPlot: ``x`` in epoch seconds, values in USD (display only; the tables carry exact
    amounts)."""
    last_day = now.astimezone(UTC).date()
    first_day = last_day - timedelta(days=days - 1)
    spends = usage.daily_spend(session, first_day=first_day, last_day=last_day, split=split)
    day_list = [first_day + timedelta(days=offset) for offset in range(days)]
    names = sorted({spend.name for spend in spends})
    labels = {name: name for name in names}
    if split == "key":
        labels = dict(
            session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(names)))
            .tuples()
            .all()
        )
    values = {name: [0.0] * days for name in names}
    for spend in spends:
        values[spend.name][(spend.day - first_day).days] = spend.charged_nanos / 1e9
    return {
        "x": [int(datetime.combine(day, datetime.min.time(), UTC).timestamp()) for day in day_list],
        "series": [{"label": labels.get(name, name), "values": values[name]} for name in names],
    }


def job_image(session: Session, *, job_id: str, role: str, position: int) -> JobImage:
    image = session.scalar(
        select(JobImage).where(
            JobImage.job_id == job_id, JobImage.role == role, JobImage.position == position
        )
    )
    if image is None:
        raise NotFound("no such image of this job", code="image_not_found")
    if image.data is None:
        raise retention.expired(session.get_one(Job, job_id))
    return image

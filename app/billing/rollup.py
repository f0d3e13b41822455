"""The hourly usage rollup: the ledger (``charges`` joined to ``jobs`` for tiles and neurons)
summed per closed UTC hour, key and model into ``usage_hours``.

Each pass inserts every hour from the watermark up to the last hour that has been closed for
``ROLLUP_GRACE``, and moves the watermark there, in one transaction: an hour is written once,
and a pass that runs again (or at the same time, which waits on the watermark's row lock on
PostgreSQL, or fails on the primary key on SQLite) changes nothing.

Why a grace: a charge's ``created_at`` is taken when its row is flushed, inside the worker's
transaction that also stores the image and the status; that transaction commits a moment later.
So at 10:00:00 a charge stamped 09:59:59.9 may not be visible yet. Rolling an hour up only once
it has been closed for two minutes leaves that transaction ample time (it holds no network
calls; a database outage makes the worker retry the whole transaction, stamping a new
``created_at``). A charge stamped in an hour the rollup already covers would be missing from the
reports; the grace is what rules that out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Numeric,
    SQLColumnExpression,
    case,
    cast,
    func,
    insert,
    not_,
    null,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.billing.models import Charge, LedgerHour, UsageHour, UsageRollupState
from app.jobs.models import Job

ROLLUP_GRACE = timedelta(minutes=2)
# The ledger is checked an hour after the rollup's grace: a charge that reached an hour after
# the rollup had summed it (which the grace rules out) would show as a difference.
LEDGER_CHECK_LAG = timedelta(hours=1)
# One pass rolls at most this much, so a long backlog (a first run over years of ledger) is
# caught up in bounded transactions, a pass a beat interval.
MAX_HOURS_PER_PASS = 7 * 24
# The rollup also keeps each hour's sums over its first 15, 30 and 45 minutes.
QUARTER_MINUTES = (15, 30, 45)
MEASURES = ("jobs", "output_tiles", "input_tiles", "charged_nanos")
HOUR = timedelta(hours=1)
# $0.011 per 1,000 neurons (workers-ai.md) = 11,000 nano-USD per neuron.
NANOS_PER_NEURON = 11_000


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def hour_of(column: SQLColumnExpression[datetime], dialect: str) -> ColumnElement[datetime]:
    """The UTC hour a time falls in, as SQL, stored the way ``UTCDateTime`` stores times."""
    if dialect == "postgresql":
        return func.date_trunc("hour", column, "UTC")
    # SQLite keeps UTCDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text: keep that exact form, or
    # comparisons with bound times (compared as text) would be off.
    return func.strftime("%Y-%m-%d %H:00:00.000000", column)


def seconds_into_hour(column: SQLColumnExpression[datetime], dialect: str) -> ColumnElement[int]:
    """Whole seconds since the start of the UTC hour (so ``>= n`` for a whole ``n`` is exact)."""
    if dialect == "postgresql":
        utc = func.timezone("UTC", column)
        return cast(
            func.extract("minute", utc) * 60 + func.floor(func.extract("second", utc)), Integer
        )
    return cast(func.strftime("%M", column), Integer) * 60 + cast(
        func.strftime("%S", column), Integer
    )


def implied_nanos_sql(neurons: SQLColumnExpression[str | None], dialect: str) -> ColumnElement[int]:
    """The cost the upstream's reported neurons imply, in nano-USD, rounded to the nano-dollar;
    NULL when none were reported or the text is not a plain decimal. Workers AI reports two
    decimals, so this is exact (neurons x 11,000 is then a whole number of nano-USD)."""
    valid: ColumnElement[bool]
    if dialect == "postgresql":
        valid = neurons.regexp_match(r"^[0-9]{1,15}(\.[0-9]{1,9})?$")
        value = func.round(cast(neurons, Numeric(30, 9)) * NANOS_PER_NEURON)
    else:
        # SQLite has no decimal type: a double holds two-decimal neuron counts to far below a
        # nano-dollar, and rounding restores the exact whole number.
        glob = neurons.op("GLOB", is_comparison=True)
        valid = glob("[0-9]*") & not_(glob("*[^0-9.]*"))
        value = func.round(cast(neurons, Float) * NANOS_PER_NEURON)
    return case((valid, cast(value, BigInteger)), else_=null())


@dataclass(frozen=True)
class RollupResult:
    rolled_from: datetime | None
    rolled_until: datetime | None
    rows: int


def watermark(session: Session) -> datetime | None:
    """Every UTC hour before this is in ``usage_hours``; ``None``: nothing is yet."""
    return session.scalar(select(UsageRollupState.rolled_until).where(UsageRollupState.id == 1))


def roll_up(session: Session, *, now: datetime) -> RollupResult:
    """Roll the hours closed for ``ROLLUP_GRACE`` by ``now`` and not rolled yet, at most
    ``MAX_HOURS_PER_PASS`` of them; flushes, the caller commits (together with the watermark
    this moves). ``rolled_until`` of the result short of ``floor_hour(now - ROLLUP_GRACE)``:
    more to do."""
    dialect = session.get_bind().dialect.name
    span = _next_span(session, done_until="rolled_until", lag=ROLLUP_GRACE, now=now)
    if isinstance(span, RollupResult):
        return span
    start, until = span
    hour = hour_of(Charge.created_at, dialect)
    implied = implied_nanos_sql(Job.upstream_neurons, dialect)
    into_hour = seconds_into_hour(Charge.created_at, dialect)
    summed = (
        select(
            hour.label("hour_start"),
            Charge.api_key_id,
            Charge.model,
            func.count(Charge.id),
            func.coalesce(func.sum(Job.output_tiles), 0),
            func.coalesce(func.sum(Job.input_tiles), 0),
            func.coalesce(func.sum(Charge.amount_nanos), 0),
            func.count(implied),
            func.coalesce(func.sum(implied), 0),
            func.coalesce(func.sum(case((implied.is_not(None), Charge.amount_nanos), else_=0)), 0),
            *(
                func.coalesce(func.sum(case((into_hour < minutes * 60, value), else_=0)), 0)
                for minutes in QUARTER_MINUTES
                for value in (1, Job.output_tiles, Job.input_tiles, Charge.amount_nanos)
            ),
        )
        .join(Job, Job.id == Charge.job_id)
        .where(Charge.created_at >= start, Charge.created_at < until)
        .group_by(hour, Charge.api_key_id, Charge.model)
    )
    session.execute(
        insert(UsageHour).from_select(
            [
                "hour_start",
                "api_key_id",
                "model",
                "jobs",
                "output_tiles",
                "input_tiles",
                "charged_nanos",
                "neuron_jobs",
                "implied_nanos",
                "neuron_charged_nanos",
                *(
                    f"{measure}_before_{minutes}"
                    for minutes in QUARTER_MINUTES
                    for measure in MEASURES
                ),
            ],
            summed,
        )
    )
    return _done(session, done_until="rolled_until", hours=UsageHour.hour_start, span=span)


def _next_span(
    session: Session, *, done_until: str, lag: timedelta, now: datetime
) -> tuple[datetime, datetime] | RollupResult:
    """The hours a pass covers: from the state's ``done_until`` (locked until the caller
    commits) to the last hour closed for ``lag``, at most ``MAX_HOURS_PER_PASS``; or, with
    nothing to do, the result to return."""
    state = session.scalars(
        select(UsageRollupState).where(UsageRollupState.id == 1).with_for_update()
    ).one()
    done: datetime | None = getattr(state, done_until)
    until = floor_hour(now - lag)
    start = done
    if start is None:
        first = session.scalar(select(func.min(Charge.created_at)))
        start = floor_hour(first) if first is not None else until
    until = min(until, start + timedelta(hours=MAX_HOURS_PER_PASS))
    if start >= until:
        if done is None:
            # No charge before ``until``: those hours are complete, and empty.
            setattr(state, done_until, until)
            session.flush()
            done = until
        return RollupResult(done, done, 0)
    return start, until


def _done(
    session: Session,
    *,
    done_until: str,
    hours: InstrumentedAttribute[datetime],
    span: tuple[datetime, datetime],
) -> RollupResult:
    """Move the state's ``done_until`` to the span's end; the rows the pass wrote."""
    start, until = span
    session.execute(
        update(UsageRollupState).where(UsageRollupState.id == 1).values({done_until: until})
    )
    session.flush()
    rows = session.scalar(select(func.count()).where(hours >= start, hours < until))
    return RollupResult(start, until, int(rows or 0))


def check_ledger(session: Session, *, now: datetime) -> RollupResult:
    """Sum the ledger (``charges`` alone) per UTC hour into ``ledger_hours``, for the hours
    closed for ``LEDGER_CHECK_LAG``: later than the rollup, and by a statement of its own, so
    the reports (the rollup) and this check can disagree if a charge came late or a report
    summed wrong. Flushes; the caller commits, with the state this moves."""
    span = _next_span(session, done_until="ledger_checked_until", lag=LEDGER_CHECK_LAG, now=now)
    if isinstance(span, RollupResult):
        return span
    start, until = span
    hour = hour_of(Charge.created_at, session.get_bind().dialect.name)
    session.execute(
        insert(LedgerHour).from_select(
            ["hour_start", "jobs", "charged_nanos"],
            select(hour, func.count(Charge.id), func.coalesce(func.sum(Charge.amount_nanos), 0))
            .where(Charge.created_at >= start, Charge.created_at < until)
            .group_by(hour),
        )
    )
    return _done(session, done_until="ledger_checked_until", hours=LedgerHour.hour_start, span=span)


def ledger_checked_until(session: Session) -> datetime | None:
    """Every UTC hour before this is in ``ledger_hours``; ``None``: none is yet."""
    return session.scalar(
        select(UsageRollupState.ledger_checked_until).where(UsageRollupState.id == 1)
    )

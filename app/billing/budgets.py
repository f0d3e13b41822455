"""Exact budgets: a job's cost is held at submit, released if it fails or is canceled, and
turned into the charge when it succeeds.

The hold is one conditional UPDATE (``held + charged + cost <= budget``) on the key's row for
the period: PostgreSQL re-checks it under the row lock and SQLite serialises writers, so
concurrent submissions can never overshoot. Services flush; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.billing.models import BudgetPeriod
from app.core import metrics
from app.core.db import rows_affected
from app.core.errors import FluxgateError
from app.core.money import format_usd
from app.keys.models import ApiKey

TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


class BudgetExceeded(FluxgateError):
    status_code = 402
    code = "budget_exceeded"


def period_start(api_key: ApiKey, at: datetime) -> datetime:
    if api_key.budget_period == "total":
        return TOTAL_PERIOD_START
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def _period_row(session: Session, api_key_id: str, start: datetime) -> None:
    """Make sure the period's row exists (first submission of the month)."""
    if session.get(BudgetPeriod, (api_key_id, start)) is not None:
        return
    try:
        with session.begin_nested():
            session.add(
                BudgetPeriod(
                    api_key_id=api_key_id, period_start=start, held_nanos=0, charged_nanos=0
                )
            )
    except IntegrityError:
        pass  # a concurrent submission made it first


def hold(session: Session, *, api_key: ApiKey, amount_nanos: int, at: datetime) -> datetime | None:
    """Reserve ``amount_nanos`` of the key's budget; the period it is held in, or ``None`` when
    the key has no budget. Raises :class:`BudgetExceeded` (402) when it does not fit."""
    if api_key.budget_nanos is None:
        return None
    start = period_start(api_key, at)
    _period_row(session, api_key.id, start)
    reserved = session.execute(
        update(BudgetPeriod)
        .where(
            BudgetPeriod.api_key_id == api_key.id,
            BudgetPeriod.period_start == start,
            BudgetPeriod.held_nanos + BudgetPeriod.charged_nanos + amount_nanos
            <= api_key.budget_nanos,
        )
        .values(held_nanos=BudgetPeriod.held_nanos + amount_nanos)
        .execution_options(synchronize_session=False)
    )
    if rows_affected(reserved) != 1:
        period = "this month" if api_key.budget_period == "month" else "in total"
        metrics.SUBMISSIONS_REFUSED.labels("budget_exceeded").inc()
        raise BudgetExceeded(
            f"this job costs ${format_usd(amount_nanos)}, more than is left of the key's "
            f"${format_usd(api_key.budget_nanos)} budget {period}"
        )
    return start


def release(
    session: Session, *, api_key_id: str, start: datetime | None, amount_nanos: int
) -> None:
    """The job failed or was canceled: its hold goes back to the budget."""
    if start is None:
        return
    session.execute(
        update(BudgetPeriod)
        .where(BudgetPeriod.api_key_id == api_key_id, BudgetPeriod.period_start == start)
        .values(held_nanos=BudgetPeriod.held_nanos - amount_nanos)
        .execution_options(synchronize_session=False)
    )


def settle(session: Session, *, api_key_id: str, start: datetime | None, amount_nanos: int) -> None:
    """The job succeeded: its hold becomes spending."""
    if start is None:
        return
    session.execute(
        update(BudgetPeriod)
        .where(BudgetPeriod.api_key_id == api_key_id, BudgetPeriod.period_start == start)
        .values(
            held_nanos=BudgetPeriod.held_nanos - amount_nanos,
            charged_nanos=BudgetPeriod.charged_nanos + amount_nanos,
        )
        .execution_options(synchronize_session=False)
    )


def used_nanos(session: Session, *, api_keys: Sequence[ApiKey], at: datetime) -> dict[str, int]:
    """What each key has used of its budget in the period ``at`` falls in (held by unfinished
    jobs, and charged), by key id: one query for all of them."""
    periods = {api_key.id: period_start(api_key, at) for api_key in api_keys}
    used = dict.fromkeys(periods, 0)
    if periods:
        found = session.scalars(
            select(BudgetPeriod).where(
                tuple_(BudgetPeriod.api_key_id, BudgetPeriod.period_start).in_(
                    list(periods.items())
                )
            )
        )
        for period in found:
            used[period.api_key_id] = period.held_nanos + period.charged_nanos
    return used

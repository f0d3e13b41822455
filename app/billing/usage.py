"""Usage reports, computed from the ledger (``charges``) so they equal it to the nano-dollar."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from app.billing.models import Charge
from app.core.errors import InvalidParameter
from app.core.money import format_usd
from app.core.orm import as_utc
from app.jobs.models import Job

GroupBy = Literal["day", "model", "key"]


@dataclass(frozen=True)
class UsageRow:
    group: str
    jobs: int
    output_tiles: int
    input_tiles: int
    charged_nanos: int


def parse_bound(value: str | None, *, param: str, default: datetime) -> datetime:
    """A date (``2026-11-01``, midnight UTC) or an ISO datetime; naive means UTC."""
    if value is None:
        return default
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
        return as_utc(parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed)
    except ValueError:
        raise InvalidParameter(
            f"{param} must be a date like 2026-11-01 or an ISO 8601 time", param=param
        ) from None


def default_window(now: datetime) -> tuple[datetime, datetime]:
    """This calendar month so far (UTC)."""
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    return start, now + timedelta(seconds=1)


def usage(
    session: Session,
    *,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    api_key_id: str | None = None,
) -> list[UsageRow]:
    """Charged jobs with ``start <= charged < end``, grouped; one key's, or everyone's."""
    if end <= start:
        raise InvalidParameter("to must be after from", param="to")
    columns: dict[str, ColumnElement[Any]] = {
        "day": func.date(Charge.created_at),
        "model": Charge.__table__.c.model,
        "key": Charge.__table__.c.api_key_id,
    }
    group = columns[group_by]
    conditions = [Charge.created_at >= start, Charge.created_at < end]
    if api_key_id is not None:
        conditions.append(Charge.api_key_id == api_key_id)
    query: Select[tuple[Any, int, int, int, int]] = (
        select(
            group.label("group"),
            func.count(Charge.id),
            func.coalesce(func.sum(Job.output_tiles), 0),
            func.coalesce(func.sum(Job.input_tiles), 0),
            func.coalesce(func.sum(Charge.amount_nanos), 0),
        )
        .join(Job, Job.id == Charge.job_id)
        .where(*conditions)
        .group_by(group)
        .order_by(group)
    )
    return [
        UsageRow(
            group=str(row[0]),
            jobs=int(row[1]),
            output_tiles=int(row[2]),
            input_tiles=int(row[3]),
            charged_nanos=int(row[4]),
        )
        for row in session.execute(query)
    ]


def as_csv(rows: list[UsageRow], *, group_by: GroupBy) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([group_by, "jobs", "output_tiles", "input_tiles", "charged_usd"])
    for row in rows:
        writer.writerow(
            [row.group, row.jobs, row.output_tiles, row.input_tiles, format_usd(row.charged_nanos)]
        )
    return out.getvalue()

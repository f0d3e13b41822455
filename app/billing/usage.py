"""Usage reports: charged jobs, tiles and nano-USD per hour, day, key or model, in any time zone,
equal to the ledger (``charges``) to the nano-dollar.

Where the numbers come from. A report's window ``[start, end)`` is cut into UTC hours:

- whole hours before the rollup's watermark are read from ``usage_hours`` (app/billing/rollup.py);
- whole hours from the watermark on are read from the ledger, summed per hour (or per key or
  model) in SQL;
- what is left is read from the ledger by exact time: the partial hours at the window's edges,
  and every hour that a bucket boundary splits where the rollup cannot. A day in Asia/Kolkata
  (+05:30) starts at 18:30 UTC, in the middle of a UTC hour. The rollup keeps, for each hour,
  the sums of its first 15, 30 and 45 minutes too, so a rolled-up hour split at :15, :30 or
  :45 (every zone in use since 1972; +05:45, DST changes by half an hour, and midnights a DST
  change skips included: the day then starts at the change) is split exactly from the rollup:
  18:00-18:30 is the "first 30 minutes", 18:30-19:00 the hour minus that. Any other split (an
  old offset such as Liberia's -00:44:30 until 1972, or an hour after the watermark) is read
  from the ledger in its two parts: one statement for all the hours split at the same second,
  grouped by hour and by which side of that second a charge falls.

Every charge therefore counts exactly once, in the bucket its ``created_at`` falls in, whether
or not the rollup has run: reports before and after a rollup are equal.

Buckets: ``day`` is the local date (``YYYY-MM-DD``) in ``tz``; ``hour`` is a UTC hour, named by
the local time its part of the window starts at (ISO 8601 with the offset, e.g.
``2026-11-02T00:30:00+05:30`` for 19:00 UTC; whole-hour zones show their local hours); ``key``
and ``model`` ignore time within the window.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session

from app.billing.models import Charge, LedgerHour, UsageHour
from app.billing.rollup import (
    HOUR,
    MEASURES,
    QUARTER_MINUTES,
    floor_hour,
    hour_of,
    ledger_checked_until,
    seconds_into_hour,
    watermark,
)
from app.core.errors import InvalidParameter
from app.core.money import format_usd
from app.core.orm import UTCDateTime, as_utc
from app.jobs.models import Job

GroupBy = Literal["hour", "day", "model", "key"]
GROUP_BYS: tuple[GroupBy, ...] = ("hour", "day", "model", "key")
# Ledger pieces read in one statement (SQLite allows at most 500 parts of a UNION).
PIECES_PER_STATEMENT = 100
# An hourly report covers at most this much, so its answer stays a page, not a flood; a daily
# one at most a century (its boundaries are worked out one by one).
MAX_HOURLY_WINDOW = timedelta(days=366)
MAX_DAILY_WINDOW = timedelta(days=36_525)
# Reports cover times the ledger can hold, with room for any zone's midnights around them.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class UsageRow:
    group: str
    jobs: int
    output_tiles: int
    input_tiles: int
    charged_nanos: int


@dataclass(frozen=True)
class UsageTotals:
    jobs: int
    output_tiles: int
    input_tiles: int
    charged_nanos: int


@cache
def _zone_names() -> frozenset[str]:
    # "localtime" is the server's own zone, not a name a caller can mean.
    return frozenset(available_timezones()) - {"localtime", "posixrules"}


def parse_tz(value: str | None) -> ZoneInfo:
    """An IANA zone name (``Asia/Kolkata``); ``None``: UTC. Anything else is a 422 naming tz."""
    if value is None or value == "UTC":
        return ZoneInfo("UTC")
    if value not in _zone_names():
        raise InvalidParameter(
            f"tz must be an IANA time zone name such as Europe/Berlin, not {value[:64]!r}",
            param="tz",
        )
    return ZoneInfo(value)


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The instant (UTC) a local day starts. Where DST skips midnight, the wall time is read
    with the offset before the change, which is the instant of the change itself."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def parse_bound(value: str | None, *, param: str, default: datetime, tz: tzinfo = UTC) -> datetime:
    """A date (``2026-11-01``: midnight in ``tz``) or an ISO datetime (naive: in ``tz``)."""
    if value is None:
        return default
    try:
        if len(value) == 10:
            return local_midnight(date.fromisoformat(value), tz)
        parsed = datetime.fromisoformat(value)
        return as_utc(parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed)
    except (ValueError, OverflowError):
        raise InvalidParameter(
            f"{param} must be a date like 2026-11-01 or an ISO 8601 time", param=param
        ) from None


def default_window(now: datetime, tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    """This calendar month so far, in ``tz``."""
    local = now.astimezone(tz)
    return local_midnight(local.date().replace(day=1), tz), now + timedelta(seconds=1)


@dataclass(frozen=True)
class Window:
    """A report's window, ``start <= charged < end``, and the zone its days and hours are in."""

    start: datetime
    end: datetime
    tz: ZoneInfo


def window(*, start: str | None, end: str | None, tz: str | None, now: datetime) -> Window:
    """The window a caller named (``from``/``to``: dates are midnights in ``tz``), by default
    this month so far in ``tz``."""
    zone = parse_tz(tz)
    default_start, default_end = default_window(now, zone)
    span = Window(
        start=parse_bound(start, param="from", default=default_start, tz=zone),
        end=parse_bound(end, param="to", default=default_end, tz=zone),
        tz=zone,
    )
    # Checked here, before anything works out local days around the bounds.
    if span.start < EARLIEST:
        raise InvalidParameter("from must be 1970-01-01 or later", param="from")
    if span.end > LATEST:
        raise InvalidParameter("to must be before the year 9000", param="to")
    return span


def _ceil_hour(at: datetime) -> datetime:
    floor = floor_hour(at)
    return floor if floor == at else floor + HOUR


def _day_cuts(start: datetime, end: datetime, tz: tzinfo) -> list[datetime]:
    """The local midnights strictly inside ``(start, end)``, as UTC instants."""
    cuts = []
    day = start.astimezone(tz).date()
    last = end.astimezone(tz).date()
    while day <= last:
        midnight = local_midnight(day, tz)
        if start < midnight < end:
            cuts.append(midnight)
        day += timedelta(days=1)
    return cuts


@dataclass(frozen=True)
class _Plan:
    """How one report reads: whole hours from the rollup and from the ledger, and exact
    pieces (each within one bucket) from the ledger."""

    rolled: tuple[datetime, datetime] | None
    raw_hours: tuple[datetime, datetime] | None
    # Each hour a boundary splits, and how many seconds into the hour the boundary is.
    split_hours: dict[datetime, int]
    pieces: list[tuple[datetime, datetime]]


def _plan(
    start: datetime, end: datetime, *, cuts: list[datetime], rolled_until: datetime | None
) -> _Plan:
    first, last = _ceil_hour(start), floor_hour(end)
    if first >= last:
        return _Plan(None, None, {}, _split([(start, end)], cuts))
    # Hours a bucket boundary cuts in two (never the partial hours at the edges: those are
    # read by exact time anyway).
    # Zone offsets are whole seconds, so boundaries are too.
    split = {
        floor_hour(cut): int((cut - floor_hour(cut)).total_seconds())
        for cut in cuts
        if cut != floor_hour(cut) and first <= cut < last
    }
    middle = min(max(rolled_until or first, first), last)
    rolled = (first, middle) if first < middle else None
    raw_hours = (middle, last) if middle < last else None
    edges = [(start, first), (last, end)]
    return _Plan(rolled, raw_hours, split, _split([e for e in edges if e[0] < e[1]], cuts))


def _split(
    intervals: list[tuple[datetime, datetime]], cuts: list[datetime]
) -> list[tuple[datetime, datetime]]:
    pieces: list[tuple[datetime, datetime]] = []
    for low, high in intervals:
        inside = [cut for cut in cuts if low < cut < high]
        pieces.extend(itertools.pairwise([low, *inside, high]))
    return pieces


def _sums(jobs: Any, output_tiles: Any, input_tiles: Any, nanos: Any) -> list[Any]:
    return [
        jobs,
        func.coalesce(func.sum(output_tiles), 0),
        func.coalesce(func.sum(input_tiles), 0),
        func.coalesce(func.sum(nanos), 0),
    ]


def _ledger_sums() -> list[Any]:
    return _sums(func.count(Charge.id), Job.output_tiles, Job.input_tiles, Charge.amount_nanos)


def _rollup_sums() -> list[Any]:
    return [
        func.coalesce(func.sum(UsageHour.jobs), 0),
        *_sums(None, UsageHour.output_tiles, UsageHour.input_tiles, UsageHour.charged_nanos)[1:],
    ]


class _Accumulator:
    def __init__(self) -> None:
        self.sums: dict[Any, list[int]] = {}

    def add(self, bucket: Any, jobs: Any, out: Any, inp: Any, nanos: Any) -> None:
        if not jobs:
            return
        found = self.sums.setdefault(bucket, [0, 0, 0, 0])
        for index, value in enumerate((jobs, out, inp, nanos)):
            found[index] += int(value)


def usage(
    session: Session,
    *,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    tz: tzinfo = UTC,
    api_key_id: str | None = None,
) -> list[UsageRow]:
    """Charged jobs with ``start <= charged < end``, grouped; one key's, or everyone's. Rows in
    bucket order (time, or key/model id); buckets without charges are left out."""
    if end <= start:
        raise InvalidParameter("to must be after from", param="to")
    if start < EARLIEST:
        raise InvalidParameter("from must be 1970-01-01 or later", param="from")
    if end > LATEST:
        raise InvalidParameter("to must be before the year 9000", param="to")
    if group_by == "hour" and end - start > MAX_HOURLY_WINDOW:
        raise InvalidParameter("group_by=hour covers at most 366 days", param="to")
    if group_by == "day" and end - start > MAX_DAILY_WINDOW:
        raise InvalidParameter("group_by=day covers at most 100 years", param="to")
    dialect = session.get_bind().dialect.name
    by_time = group_by in ("hour", "day")
    cuts = _day_cuts(start, end, tz) if group_by == "day" else []
    plan = _plan(start, end, cuts=cuts, rolled_until=watermark(session))
    found = _Accumulator()

    def bucket_of(at: datetime) -> Any:
        if group_by == "day":
            return at.astimezone(tz).date()
        return max(floor_hour(at), start)  # hour

    dimension: Any = None
    if not by_time:
        dimension = Charge.api_key_id if group_by == "key" else Charge.model
    # Whole hours: from the rollup, then from the ledger.
    # Split hours the rollup splits itself (at :15, :30 or :45); the others come from the ledger.
    split_in_rollup: dict[datetime, int] = {}
    if plan.rolled is not None:
        low, high = plan.rolled
        split_in_rollup = {
            hour: offset
            for hour, offset in plan.split_hours.items()
            if low <= hour < high and offset // 60 in QUARTER_MINUTES and offset % 60 == 0
        }
        key_column = (
            UsageHour.hour_start
            if by_time
            else (UsageHour.api_key_id if group_by == "key" else UsageHour.model)
        )
        quarters = [
            func.sum(getattr(UsageHour, f"{measure}_before_{minutes}"))
            for minutes in QUARTER_MINUTES
            for measure in MEASURES
        ]
        query = (
            select(key_column, *_rollup_sums(), *(quarters if split_in_rollup else []))
            .where(UsageHour.hour_start >= low, UsageHour.hour_start < high)
            .group_by(key_column)
        )
        if api_key_id is not None:
            query = query.where(UsageHour.api_key_id == api_key_id)
        for bucket, *sums in session.execute(query):
            if not by_time:
                found.add(bucket, *sums)
            elif bucket in split_in_rollup:
                offset = split_in_rollup[bucket]
                index = 4 + 4 * QUARTER_MINUTES.index(offset // 60)
                before = [int(value) for value in sums[index : index + 4]]
                rest = [int(total) - part for total, part in zip(sums[:4], before, strict=True)]
                found.add(bucket_of(bucket), *before)
                found.add(bucket_of(bucket + timedelta(seconds=offset)), *rest)
            elif bucket not in plan.split_hours:
                found.add(bucket_of(bucket), *sums[:4])
    if plan.raw_hours is not None:
        low, high = plan.raw_hours
        key_expr: ColumnElement[Any] = (
            type_coerce(hour_of(Charge.created_at, dialect), UTCDateTime) if by_time else dimension
        )
        raw = (
            select(key_expr, *_ledger_sums())
            .join(Job, Job.id == Charge.job_id)
            .where(Charge.created_at >= low, Charge.created_at < high)
            .group_by(key_expr)
        )
        if api_key_id is not None:
            raw = raw.where(Charge.api_key_id == api_key_id)
        for bucket, *sums in session.execute(raw):
            if by_time and bucket in plan.split_hours:
                continue
            found.add(bucket_of(bucket) if by_time else bucket, *sums)
    # Hours a boundary splits: from the ledger, each hour in its two parts. One statement for
    # all the hours split at the same second of the hour (a zone has one or two such seconds).
    by_offset: dict[int, list[datetime]] = {}
    for hour, offset in plan.split_hours.items():
        if hour not in split_in_rollup:
            by_offset.setdefault(offset, []).append(hour)
    for offset, hours in sorted(by_offset.items()):
        hour_expr = type_coerce(hour_of(Charge.created_at, dialect), UTCDateTime)
        after = case((seconds_into_hour(Charge.created_at, dialect) >= offset, 1), else_=0)
        split_query = (
            select(hour_expr, after, *_ledger_sums())
            .join(Job, Job.id == Charge.job_id)
            .where(
                or_(
                    *(
                        and_(Charge.created_at >= hour, Charge.created_at < hour + HOUR)
                        for hour in hours
                    )
                )
            )
            .group_by(hour_expr, after)
        )
        if api_key_id is not None:
            split_query = split_query.where(Charge.api_key_id == api_key_id)
        for hour, is_after, *sums in session.execute(split_query):
            part_start = hour + timedelta(seconds=offset) if is_after else hour
            found.add(bucket_of(part_start), *sums)
    # Pieces of hours at the window's edges, by exact time; each lies within one bucket.
    for chunk in _chunks(plan.pieces, PIECES_PER_STATEMENT):
        parts: list[Select[Any]] = []
        for index, (low, high) in enumerate(chunk):
            label = literal(index) if by_time else dimension
            part = (
                select(label.label("bucket"), *_ledger_sums())
                .join(Job, Job.id == Charge.job_id)
                .where(Charge.created_at >= low, Charge.created_at < high)
            )
            if not by_time:
                part = part.group_by(dimension)
            if api_key_id is not None:
                part = part.where(Charge.api_key_id == api_key_id)
            parts.append(part)
        statement = parts[0] if len(parts) == 1 else union_all(*parts)
        for bucket, *sums in session.execute(statement):
            found.add(bucket_of(chunk[int(bucket)][0]) if by_time else bucket, *sums)
    return [
        UsageRow(_label(bucket, group_by, tz), *sums) for bucket, sums in sorted(found.sums.items())
    ]


def _chunks(
    pieces: list[tuple[datetime, datetime]], size: int
) -> Iterator[list[tuple[datetime, datetime]]]:
    for index in range(0, len(pieces), size):
        yield pieces[index : index + size]


def _label(bucket: Any, group_by: GroupBy, tz: tzinfo) -> str:
    if group_by == "day":
        return str(bucket.isoformat())
    if group_by == "hour":
        return str(bucket.astimezone(tz).isoformat())
    return str(bucket)


def totals(rows: Iterable[UsageRow]) -> UsageTotals:
    """The sum of a report's rows (any grouping of one window gives the same)."""
    jobs = output_tiles = input_tiles = nanos = 0
    for row in rows:
        jobs += row.jobs
        output_tiles += row.output_tiles
        input_tiles += row.input_tiles
        nanos += row.charged_nanos
    return UsageTotals(jobs, output_tiles, input_tiles, nanos)


@dataclass(frozen=True)
class LedgerTotals:
    """A window's totals read straight from the ledger. Tiles live in ``jobs``, not in
    ``charges``: they are summed only when asked for (a join over every charge of the window,
    about ten times the cost of the ledger's own scan)."""

    jobs: int
    charged_nanos: int
    output_tiles: int | None = None
    input_tiles: int | None = None

    def agrees_with(self, totals: UsageTotals) -> bool:
        """Equal to a report's totals, in everything this holds."""
        return (
            self.jobs == totals.jobs
            and self.charged_nanos == totals.charged_nanos
            and self.output_tiles in (None, totals.output_tiles)
            and self.input_tiles in (None, totals.input_tiles)
        )


def ledger_totals(
    session: Session,
    *,
    start: datetime,
    end: datetime,
    api_key_id: str | None = None,
    with_tiles: bool = False,
) -> LedgerTotals:
    """The window's totals from the ledger (never the rollup): what every report's totals must
    equal, whatever it is grouped by. Everyone's jobs and nano-USD come from the ledger's own
    hourly sums (``ledger_hours``) for the whole hours they cover and from ``charges`` for the
    rest; one key's, or tiles (which live in ``jobs``), from ``charges`` alone."""
    conditions = [Charge.created_at >= start, Charge.created_at < end]
    if api_key_id is not None:
        conditions.append(Charge.api_key_id == api_key_id)
    if with_tiles:
        query = select(*_ledger_sums()).join(Job, Job.id == Charge.job_id).where(*conditions)
        jobs, output_tiles, input_tiles, nanos = session.execute(query).one()
        return LedgerTotals(int(jobs), int(nanos), int(output_tiles), int(input_tiles))
    counted = (func.count(Charge.id), func.coalesce(func.sum(Charge.amount_nanos), 0))
    if api_key_id is not None:
        jobs, nanos = session.execute(select(*counted).where(*conditions)).one()
        return LedgerTotals(int(jobs), int(nanos))
    low = min(_ceil_hour(start), end)
    high = max(low, min(floor_hour(end), ledger_checked_until(session) or low))
    jobs, nanos = session.execute(
        select(
            func.coalesce(func.sum(LedgerHour.jobs), 0),
            func.coalesce(func.sum(LedgerHour.charged_nanos), 0),
        ).where(LedgerHour.hour_start >= low, LedgerHour.hour_start < high)
    ).one()
    # The rest: before the first whole hour, and from the last hour summed to the end.
    rest = select(*counted).where(
        or_(
            and_(Charge.created_at >= start, Charge.created_at < low),
            and_(Charge.created_at >= high, Charge.created_at < end),
        )
    )
    more_jobs, more_nanos = session.execute(rest).one()
    return LedgerTotals(int(jobs) + int(more_jobs), int(nanos) + int(more_nanos))


CSV_HEADER = ("jobs", "output_tiles", "input_tiles", "charged_usd")


def csv_lines(rows: Iterable[UsageRow], *, group_by: GroupBy) -> Iterator[str]:
    """The report as CSV, a line at a time (the rows of the JSON view, in its order)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def line(values: Iterable[object]) -> str:
        out.seek(0)
        out.truncate()
        writer.writerow(values)
        return out.getvalue()

    yield line((group_by, *CSV_HEADER))
    for row in rows:
        yield line(
            (row.group, row.jobs, row.output_tiles, row.input_tiles, format_usd(row.charged_nanos))
        )


@dataclass(frozen=True)
class DailySpend:
    day: date  # UTC
    name: str  # the model, or the key id
    jobs: int
    output_tiles: int
    charged_nanos: int


def _utc_day(column: Any, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.substr(column, 1, 10)  # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS...'


def daily_spend(
    session: Session, *, first_day: date, last_day: date, split: Literal["model", "key"]
) -> list[DailySpend]:
    """Charged jobs, output tiles and nano-USD per UTC day and model (or key), ``first_day`` to
    ``last_day``: the rollup below its watermark, the ledger above it (UTC days are whole
    hours: no hour splits)."""
    if last_day < first_day:
        raise InvalidParameter("to must not be before from", param="to")
    dialect = session.get_bind().dialect.name
    start = local_midnight(first_day, UTC)
    end = local_midnight(last_day + timedelta(days=1), UTC)
    rolled_until = min(max(watermark(session) or start, start), end)
    sums: dict[tuple[date, str], tuple[int, int, int]] = {}

    def add(rows: Iterable[Any]) -> None:
        for day, name, jobs, tiles, nanos in rows:
            key = (date.fromisoformat(str(day)[:10]), str(name))
            before = sums.get(key, (0, 0, 0))
            sums[key] = (before[0] + int(jobs), before[1] + int(tiles), before[2] + int(nanos))

    rolled_name = UsageHour.model if split == "model" else UsageHour.api_key_id
    if rolled_until > start:
        day = _utc_day(UsageHour.hour_start, dialect)
        add(
            session.execute(
                select(
                    day,
                    rolled_name,
                    func.sum(UsageHour.jobs),
                    func.sum(UsageHour.output_tiles),
                    func.sum(UsageHour.charged_nanos),
                )
                .where(UsageHour.hour_start >= start, UsageHour.hour_start < rolled_until)
                .group_by(day, rolled_name)
            )
        )
    if rolled_until < end:
        day = _utc_day(Charge.created_at, dialect)
        name = Charge.model if split == "model" else Charge.api_key_id
        add(
            session.execute(
                select(
                    day,
                    name,
                    func.count(Charge.id),
                    func.coalesce(func.sum(Job.output_tiles), 0),
                    func.sum(Charge.amount_nanos),
                )
                .join(Job, Job.id == Charge.job_id)
                .where(Charge.created_at >= rolled_until, Charge.created_at < end)
                .group_by(day, name)
            )
        )
    return [DailySpend(day, name, *totals) for (day, name), totals in sorted(sums.items())]

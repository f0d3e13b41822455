"""The hourly rollup and the reports on it, against a migrated database on both backends: exact
at every zone's midnights (half-hour zones and DST included), unchanged by a rollup or a rerun
of it, and equal to the ledger."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.billing import reconciliation, rollup, usage
from app.billing.models import Charge, LedgerHour, Price, UsageHour
from app.core.db import make_engine
from app.core.errors import InvalidParameter
from app.core.ids import new_id
from app.core.migrate import upgrade_to_head
from app.core.settings import normalize_database_url
from app.jobs.models import Job, JobStatus
from tests.harness.claims import postgres_database
from tests.harness.schema import key_row

MODELS = ("flux-2-klein-4b", "flux-2-dev")


@pytest.fixture(params=["postgres", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a database built by the migrations."""

    def build(url: str) -> Iterator[sessionmaker[Session]]:
        url = normalize_database_url(url)
        upgrade_to_head(url)
        engine = make_engine(url)
        try:
            yield sessionmaker(bind=engine)
        finally:
            engine.dispose()

    if request.param == "sqlite":
        yield from build(f"sqlite:///{tmp_path / 'rollup.db'}")
    else:
        with postgres_database() as url:
            yield from build(url)


def add_key(session: Session, name: str) -> str:
    key = key_row(name)
    session.add(key)
    session.flush()
    return key.id


def add_charge(
    session: Session,
    *,
    key: str,
    at: datetime,
    nanos: int,
    model: str = "flux-2-klein-4b",
    output_tiles: int = 1,
    input_tiles: int = 0,
    neurons: str | None = None,
) -> None:
    price_id = session.scalars(select(Price.id).where(Price.model == model)).first()
    assert price_id is not None
    job = Job(
        id=new_id("job"),
        api_key_id=key,
        status=JobStatus.SUCCEEDED,
        model=model,
        prompt="a test",
        width=512,
        height=512,
        steps=4,
        price_id=price_id,
        estimated_nanos=nanos,
        charged_nanos=nanos,
        input_tiles=input_tiles,
        output_tiles=output_tiles,
        upstream_neurons=neurons,
        created_at=at,
        completed_at=at,
    )
    session.add(job)
    session.flush()
    session.add(
        Charge(
            job_id=job.id,
            api_key_id=key,
            model=model,
            price_id=price_id,
            amount_nanos=nanos,
            created_at=at,
        )
    )
    session.flush()


def report(
    sessions: sessionmaker[Session],
    group_by: usage.GroupBy,
    *,
    start: datetime,
    end: datetime,
    tz: str = "UTC",
    key: str | None = None,
) -> list[tuple[str, int, int, int, int]]:
    with sessions() as session:
        rows = usage.usage(
            session,
            start=start,
            end=end,
            group_by=group_by,
            tz=ZoneInfo(tz),
            api_key_id=key,
        )
    return [
        (row.group, row.jobs, row.output_tiles, row.input_tiles, row.charged_nanos) for row in rows
    ]


def roll(sessions: sessionmaker[Session], now: datetime) -> rollup.RollupResult:
    with sessions.begin() as session:
        return rollup.roll_up(session, now=now)


def rollup_rows(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    with sessions() as session:
        rows = session.scalars(
            select(UsageHour).order_by(UsageHour.hour_start, UsageHour.api_key_id, UsageHour.model)
        )
        return [
            (
                r.hour_start,
                r.api_key_id,
                r.model,
                r.jobs,
                r.output_tiles,
                r.input_tiles,
                r.charged_nanos,
                r.neuron_jobs,
                r.implied_nanos,
                r.neuron_charged_nanos,
            )
            for r in rows
        ]


DAY = datetime(2026, 11, 10, tzinfo=UTC)


def test_days_are_exact_at_midnight_in_utc_and_kolkata_before_and_after_the_rollup(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        key = add_key(session, "edges")
        for at, nanos in [
            (DAY.replace(hour=18, minute=29, second=59, microsecond=999_999), 1),
            (DAY.replace(hour=18, minute=30), 10),
            (DAY.replace(hour=23, minute=59, second=59, microsecond=999_999), 100),
            (DAY + timedelta(days=1), 1000),
        ]:
            add_charge(session, key=key, at=at, nanos=nanos)
    start, end = DAY - timedelta(days=1), DAY + timedelta(days=2)
    expected = {
        "UTC": [("2026-11-10", 3, 3, 0, 111), ("2026-11-11", 1, 1, 0, 1000)],
        "Asia/Kolkata": [("2026-11-10", 1, 1, 0, 1), ("2026-11-11", 3, 3, 0, 1110)],
    }
    for tz, rows in expected.items():
        assert report(sessions, "day", start=start, end=end, tz=tz) == rows

    done = roll(sessions, DAY + timedelta(days=3))
    assert done.rolled_until == DAY + timedelta(days=3) - timedelta(hours=1)
    rolled = rollup_rows(sessions)
    assert [(r[0], r[3], r[6]) for r in rolled] == [
        (DAY.replace(hour=18), 2, 11),
        (DAY.replace(hour=23), 1, 100),
        (DAY + timedelta(days=1), 1, 1000),
    ]
    for tz, rows in expected.items():
        assert report(sessions, "day", start=start, end=end, tz=tz) == rows
    # Kolkata's own midnights as the window: the split hour is read by exact time.
    kolkata = ZoneInfo("Asia/Kolkata")
    local_day = usage.local_midnight(DAY.date() + timedelta(days=1), kolkata)
    assert local_day == DAY.replace(hour=18, minute=30)
    assert report(
        sessions, "day", start=local_day, end=local_day + timedelta(days=1), tz="Asia/Kolkata"
    ) == [("2026-11-11", 3, 3, 0, 1110)]

    again = roll(sessions, DAY + timedelta(days=3))
    assert again.rows == 0
    assert again.rolled_until == done.rolled_until
    assert rollup_rows(sessions) == rolled


def test_an_hour_is_rolled_up_only_after_the_grace(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        key = add_key(session, "late")
        add_charge(session, key=key, at=DAY.replace(hour=9, minute=59, second=59), nanos=5)
    assert roll(sessions, DAY.replace(hour=10, minute=1)).rows == 0
    with sessions.begin() as session:  # committed late, stamped in the closed hour
        add_charge(
            session, key=key, at=DAY.replace(hour=9, minute=59, second=59, microsecond=1), nanos=7
        )
    assert roll(sessions, DAY.replace(hour=10, minute=2, second=1)).rows == 1
    assert [(r[0], r[3], r[6]) for r in rollup_rows(sessions)] == [(DAY.replace(hour=9), 2, 12)]
    assert report(sessions, "hour", start=DAY, end=DAY + timedelta(days=1)) == [
        ("2026-11-10T09:00:00+00:00", 2, 2, 0, 12)
    ]


def expected_report(
    charges: list[tuple[datetime, str, str, int, int, int]],
    group_by: usage.GroupBy,
    *,
    start: datetime,
    end: datetime,
    tz: str,
) -> list[tuple[str, int, int, int, int]]:
    """The report computed the plain way, charge by charge."""
    zone = ZoneInfo(tz)
    sums: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for at, key, model, nanos, out, inp in charges:
        if not start <= at < end:
            continue
        bucket: Any
        if group_by == "day":
            bucket = at.astimezone(zone).date()
        elif group_by == "hour":
            bucket = max(at.replace(minute=0, second=0, microsecond=0), start)
        else:
            bucket = key if group_by == "key" else model
        for index, value in enumerate((1, out, inp, nanos)):
            sums[bucket][index] += value

    def label(bucket: Any) -> str:
        if group_by == "day":
            return str(bucket.isoformat())
        if group_by == "hour":
            return str(bucket.astimezone(zone).isoformat())
        return str(bucket)

    return [(label(b), *s) for b, s in sorted(sums.items())]  # type: ignore[misc]


ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe"]


def test_reports_equal_the_ledger_in_every_zone_whatever_the_rollup_covers(
    sessions: sessionmaker[Session],
) -> None:
    """Charges spread over a DST change (New York falls back on 2026-11-01; Lord Howe moves
    by half an hour in spring), the rollup run partway, then to the end."""
    rng = random.Random(12)
    base = datetime(2026, 10, 30, 17, tzinfo=UTC)
    charges = []
    with sessions.begin() as session:
        keys = [add_key(session, f"k{n}") for n in range(3)]
        for _ in range(300):
            at = (
                base
                + timedelta(seconds=rng.randrange(4 * 86400))
                + timedelta(microseconds=rng.choice([0, 1, 999_999]))
            )
            key, model = rng.choice(keys), rng.choice(MODELS)
            nanos, out, inp = rng.randrange(1, 10**7), rng.randrange(1, 9), rng.randrange(0, 3)
            add_charge(
                session, key=key, at=at, nanos=nanos, model=model, output_tiles=out, input_tiles=inp
            )
            charges.append((at, key, model, nanos, out, inp))

    def check(tz: str) -> None:
        zone = ZoneInfo(tz)
        windows = [
            (base - timedelta(hours=5), base + timedelta(days=5)),
            (base + timedelta(minutes=17, seconds=3), base + timedelta(days=2, minutes=51)),
            (
                usage.local_midnight(datetime(2026, 10, 31).date(), zone),
                usage.local_midnight(datetime(2026, 11, 2).date(), zone),
            ),
        ]
        for start, end in windows:
            for group_by in usage.GROUP_BYS:
                got = report(sessions, group_by, start=start, end=end, tz=tz)
                assert got == expected_report(charges, group_by, start=start, end=end, tz=tz), (
                    tz,
                    group_by,
                    start,
                    end,
                )

    for tz in ZONES:
        check(tz)
    roll(sessions, base + timedelta(days=2, minutes=30))
    for tz in ZONES:
        check(tz)
    roll(sessions, base + timedelta(days=9))
    for tz in ZONES:
        check(tz)
    with sessions() as session:
        start, end = base, base + timedelta(days=4)
        ledger = usage.ledger_totals(session, start=start, end=end, with_tiles=True)
        quick = usage.ledger_totals(session, start=start, end=end)
        assert (quick.jobs, quick.charged_nanos) == (ledger.jobs, ledger.charged_nanos)
        assert quick.output_tiles is None
        for group_by in usage.GROUP_BYS:
            rows = usage.usage(session, start=start, end=end, group_by=group_by)
            totals = usage.totals(rows)
            assert ledger.agrees_with(totals)
            assert quick.agrees_with(totals)
            assert (totals.output_tiles, totals.input_tiles) == (
                ledger.output_tiles,
                ledger.input_tiles,
            )
        inside = [c for c in charges if start <= c[0] < end]
        assert ledger.jobs == len(inside)
        assert ledger.charged_nanos == sum(c[3] for c in inside)
        assert not ledger.agrees_with(usage.UsageTotals(ledger.jobs, 0, 0, ledger.charged_nanos))


def test_the_rollup_keeps_the_neurons_for_reconciliation(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        key = add_key(session, "neurons")
        add_charge(session, key=key, at=DAY, nanos=287_000, neurons="26.09")
        add_charge(session, key=key, at=DAY, nanos=287_000, neurons="26.1")
        add_charge(session, key=key, at=DAY, nanos=287_000, neurons=None)
        add_charge(session, key=key, at=DAY, nanos=287_000, neurons="n/a")
    roll(sessions, DAY + timedelta(hours=2))
    [row] = rollup_rows(sessions)
    assert (row[3], row[7], row[8], row[9]) == (4, 2, 286_990 + 287_100, 2 * 287_000)


def test_a_time_zone_must_be_an_iana_name() -> None:
    assert usage.parse_tz(None).key == "UTC"
    assert usage.parse_tz("Asia/Kolkata").key == "Asia/Kolkata"
    for bad in ["Mars/Olympus", "", "../etc/passwd", "Asia", "localtime", "utc\x00"]:
        with pytest.raises(InvalidParameter) as raised:
            usage.parse_tz(bad)
        assert raised.value.param == "tz"


def test_reconciliation_per_day_is_the_same_from_the_ledger_and_the_rollup(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        key = add_key(session, "reconcile")
        day2 = DAY + timedelta(days=1)
        add_charge(session, key=key, at=DAY.replace(hour=1), nanos=287_000, neurons="26.09")
        add_charge(session, key=key, at=DAY.replace(hour=5), nanos=1_148_000, neurons="104.36")
        add_charge(session, key=key, at=DAY.replace(hour=23, minute=59), nanos=287_000)
        add_charge(session, key=key, at=day2.replace(hour=3), nanos=15_000_000, neurons="999")
        add_charge(session, key=key, at=day2.replace(hour=4), nanos=287_000, neurons="26.1")

    def days() -> list[tuple[Any, ...]]:
        with sessions() as session:
            found = reconciliation.reconcile_days(
                session, first_day=DAY.date() - timedelta(days=1), last_day=day2.date()
            )
        return [
            (
                d.day.isoformat(),
                d.jobs,
                d.charged_nanos,
                d.jobs_with_neurons,
                d.jobs_without_neurons,
                d.neuron_charged_nanos,
                d.implied_nanos,
                d.difference_nanos,
            )
            for d in found
        ]

    expected = [
        ("2026-11-09", 0, 0, 0, 0, 0, 0, 0),
        ("2026-11-10", 3, 1_722_000, 2, 1, 1_435_000, 286_990 + 1_147_960, 50),
        ("2026-11-11", 2, 15_287_000, 2, 0, 15_287_000, 10_989_000 + 287_100, 4_010_900),
    ]
    assert days() == expected
    roll(sessions, DAY.replace(hour=12))
    assert days() == expected
    roll(sessions, day2 + timedelta(days=2))
    assert days() == expected

    with sessions() as session:
        listed = reconciliation.mismatches(session, day=day2.date())
        assert [(m.charged_nanos, m.neurons, m.implied_nanos) for m in listed] == [
            (287_000, "26.1", 287_100),
            (15_000_000, "999", 10_989_000),
        ]
        assert len(reconciliation.mismatches(session, day=DAY.date())) == 2
        assert reconciliation.mismatches(session, day=DAY.date(), tolerance_nanos=55) == []
        assert len(reconciliation.mismatches(session, day=day2.date(), limit=1)) == 1


@pytest.mark.parametrize(
    ("start", "end", "group_by", "param"),
    [
        (datetime(1, 1, 2, tzinfo=UTC), DAY, "key", "from"),
        (DAY, datetime(9999, 12, 31, tzinfo=UTC), "model", "to"),
        (DAY, DAY + timedelta(days=367), "hour", "to"),
        (datetime(1970, 1, 1, tzinfo=UTC), datetime(8999, 1, 1, tzinfo=UTC), "day", "to"),
        (DAY, DAY, "day", "to"),
    ],
)
def test_windows_a_report_cannot_cover_are_refused(
    start: datetime, end: datetime, group_by: usage.GroupBy, param: str
) -> None:
    with pytest.raises(InvalidParameter) as raised:
        usage.usage(Session(), start=start, end=end, group_by=group_by)
    assert raised.value.param == param
    with pytest.raises(InvalidParameter) as raised:
        usage.parse_bound("0001-01-01", param="from", default=DAY, tz=ZoneInfo("Asia/Tokyo"))
    assert raised.value.param == "from"


def test_a_split_the_rollup_cannot_make_is_read_from_the_ledger(
    sessions: sessionmaker[Session],
) -> None:
    """Liberia kept -00:44:30 until 1972: its midnights fall at 00:44:30 UTC."""
    monrovia = ZoneInfo("Africa/Monrovia")
    day = datetime(1971, 6, 10, tzinfo=UTC)
    midnight = usage.local_midnight(day.date(), monrovia)
    assert midnight == day.replace(minute=44, second=30)
    with sessions.begin() as session:
        key = add_key(session, "monrovia")
        add_charge(session, key=key, at=midnight - timedelta(microseconds=1), nanos=1)
        add_charge(session, key=key, at=midnight, nanos=10)
        add_charge(session, key=key, at=day.replace(minute=15), nanos=100)  # before, at :15
        add_charge(session, key=key, at=day.replace(minute=59), nanos=1000)
    start, end = day - timedelta(days=1), day + timedelta(days=1)
    expected = [("1971-06-09", 2, 2, 0, 101), ("1971-06-10", 2, 2, 0, 1010)]
    assert report(sessions, "day", start=start, end=end, tz="Africa/Monrovia") == expected
    roll(sessions, day + timedelta(days=2))
    assert report(sessions, "day", start=start, end=end, tz="Africa/Monrovia") == expected


def test_a_backlog_is_rolled_up_a_week_a_pass(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        key = add_key(session, "backlog")
        for day in range(20):
            add_charge(session, key=key, at=DAY + timedelta(days=day, hours=5), nanos=day + 1)
    now = DAY + timedelta(days=25)
    expected = report(sessions, "day", start=DAY, end=now, tz="Asia/Kolkata")
    passes = []
    for _ in range(10):
        done = roll(sessions, now)
        passes.append(done.rolled_until)
        assert report(sessions, "day", start=DAY, end=now, tz="Asia/Kolkata") == expected
        if done.rolled_until == now - timedelta(hours=1):
            break
    assert passes == [DAY + timedelta(hours=5 + 24 * 7 * n) for n in (1, 2, 3)] + [
        now - timedelta(hours=1)
    ]
    assert roll(sessions, now).rows == 0
    assert sum(row[3] for row in rollup_rows(sessions)) == 20


def test_ledger_totals_read_the_ledgers_own_hourly_sums_an_hour_late_and_stay_exact(
    sessions: sessionmaker[Session],
) -> None:
    charges = [
        (DAY + timedelta(hours=18, minutes=29, seconds=59), 100),
        (DAY + timedelta(hours=18, minutes=30), 200),
        (DAY + timedelta(hours=19, minutes=10), 300),
        (DAY + timedelta(days=2, minutes=5), 400),
    ]
    with sessions.begin() as session:
        key = add_key(session, "ledger check")
        for at, nanos in charges:
            add_charge(session, key=key, at=at, nanos=nanos)
    windows = [
        (DAY, DAY + timedelta(days=3)),
        # Asia/Kolkata's midnights: 18:30 UTC.
        (DAY + timedelta(hours=18, minutes=30), DAY + timedelta(days=1, hours=18, minutes=30)),
        (DAY + timedelta(hours=18, minutes=29), DAY + timedelta(hours=18, minutes=31)),
        (DAY + timedelta(hours=19), DAY + timedelta(hours=20)),
        (DAY + timedelta(days=2, minutes=5), DAY + timedelta(days=2, minutes=6)),
    ]

    def expected(start: datetime, end: datetime) -> tuple[int, int]:
        inside = [nanos for at, nanos in charges if start <= at < end]
        return len(inside), sum(inside)

    def totals() -> list[tuple[int, int]]:
        with sessions() as session:
            found = [usage.ledger_totals(session, start=s, end=e) for s, e in windows]
        return [(t.jobs, t.charged_nanos) for t in found]

    want = [expected(start, end) for start, end in windows]
    assert totals() == want  # nothing summed yet: all from charges

    # An hour after 19:40 is 18:40: only the hours before 18:00 are summed.
    with sessions.begin() as session:
        early = rollup.check_ledger(session, now=DAY + timedelta(hours=19, minutes=40))
    assert early.rolled_until == DAY + timedelta(hours=18)
    assert totals() == want

    with sessions.begin() as session:
        done = rollup.check_ledger(session, now=DAY + timedelta(days=3, hours=2))
    assert done.rolled_until == DAY + timedelta(days=3, hours=1)
    with sessions() as session:
        hours = session.execute(
            select(LedgerHour.hour_start, LedgerHour.jobs, LedgerHour.charged_nanos).order_by(
                LedgerHour.hour_start
            )
        ).all()
    assert [tuple(row) for row in hours] == [
        (DAY + timedelta(hours=18), 2, 300),
        (DAY + timedelta(hours=19), 1, 300),
        (DAY + timedelta(days=2), 1, 400),
    ]
    assert totals() == want  # now mostly from those sums, exact at every edge
    # A rerun changes nothing.
    with sessions.begin() as session:
        again = rollup.check_ledger(session, now=DAY + timedelta(days=3, hours=2))
    assert again.rows == 0
    assert again.rolled_until == done.rolled_until
    assert totals() == want
    # What is read for summed hours is the sums: a charge taken out of the ledger behind its
    # back is still counted there (the reports' check is against the sums an hour later).
    with sessions.begin() as session:
        session.execute(
            Charge.__table__.delete().where(
                Charge.created_at == DAY + timedelta(hours=19, minutes=10)
            )
        )
    assert totals()[3] == (1, 300)

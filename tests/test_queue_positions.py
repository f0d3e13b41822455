"""Queue positions against databases built by the migrations, on both backends: what they count
(every key's waiting jobs ahead in submission order, exactly near the front), that positions
shown together are distinct and ordered, and that one costs two index range reads whatever the
backlog (the statements' plans, not their timings)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.ids import id_floor
from app.jobs import service
from app.jobs.models import Job
from app.jobs.schemas import EXACT_POSITIONS
from app.jobs.service import JobFilters
from tests.harness.schema import (
    QUEUED,
    job_fields,
    key_row,
    klein_price_id,
    migrated_engine,
    plan_postgresql,
    plan_sqlite,
    statements,
)

COVERING = "SEARCH jobs USING COVERING INDEX ix_jobs_status_seq "


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@pytest.fixture
def key_id(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        key = key_row("positions")
        session.add(key)
    return key.id


def job(session: Session, key_id: str, **values: Any) -> Job:
    """A queued job as the ORM stores it (its ticket taken by the INSERT), not yet flushed."""
    return Job(**job_fields(key_id, klein_price_id(session), **values))


def seed(engine: Engine, key_id: str, statuses: Sequence[str]) -> None:
    """One job per status, tickets 1.. in order, ids sorting as the tickets (one millisecond
    apart), in one statement; then the planner's statistics."""
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    with Session(engine) as session:
        price_id = klein_price_id(session)
        session.execute(
            insert(Job),
            [
                job_fields(
                    key_id,
                    price_id,
                    id=id_floor("job", start + n),
                    seq=n + 1,
                    status=status,
                    prompt="seeded",
                )
                for n, status in enumerate(statuses)
            ],
        )
        if engine.dialect.name == "postgresql":
            session.execute(
                text("SELECT setval('jobs_seq_seq', :next, false)"), {"next": len(statuses) + 1}
            )
        session.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))


def listed_positions(session: Session) -> list[tuple[int, int | None]]:
    """(ticket, position) of every queued job, page by page as the admin listing shows them
    (newest first, 100 a page)."""
    shown: list[tuple[int, int | None]] = []
    cursor = None
    while True:
        page, cursor = service.list_all_jobs(
            session, filters=JobFilters(status=QUEUED), limit=100, cursor=cursor
        )
        rendered = service.to_job_out(session, page, public_url=None)
        shown += [(row.seq, out.queue_position) for row, out in zip(page, rendered, strict=True)]
        if cursor is None:
            return shown


def test_positions_count_the_jobs_ahead_in_submission_order(
    engine: Engine, sessions: sessionmaker[Session], key_id: str
) -> None:
    picks = random.Random(7)
    others = ["running", "succeeded", "failed", "canceled"]
    statuses = ["canceled", "succeeded"] + [
        QUEUED if picks.random() < 0.6 else picks.choice(others)
        for _ in range(EXACT_POSITIONS + 1500)
    ]
    seed(engine, key_id, statuses)
    with sessions() as session:
        shown = listed_positions(session)
    queued = [n + 1 for n, status in enumerate(statuses) if status == QUEUED]
    assert sorted(seq for seq, _ in shown) == queued
    # Newest first: every position below the one before it, so all distinct.
    positions = [position for _, position in shown]
    assert all(p is not None for p in positions)
    assert all(a > b for a, b in pairwise(positions)), positions
    head = queued[0]
    for seq, position in shown:
        assert position is not None
        ahead = sum(1 for other in queued if other < seq)
        if seq < head + EXACT_POSITIONS:
            # Near the front: exactly one more than the waiting jobs ahead.
            assert position == ahead + 1, (seq, position, ahead)
        else:
            # Further back, jobs that left out of turn behind the window still count.
            assert ahead + 1 <= position <= seq - head + 1, (seq, position, ahead)
    assert min(positions) == 1


def test_a_job_leaving_moves_those_behind_up_and_a_retry_keeps_its_place(
    sessions: sessionmaker[Session], key_id: str
) -> None:
    with sessions.begin() as session:
        jobs = [job(session, key_id, prompt=f"in turn {n}") for n in range(5)]
        session.add_all(jobs)
    ids = [queued.id for queued in jobs]

    def positions() -> list[int | None]:
        with sessions() as session:
            rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
            found = service.queue_positions(session, jobs=rows)
            return [found.get(job_id) for job_id in ids]

    def set_status(job_id: str, status: str) -> None:
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=status))

    assert positions() == [1, 2, 3, 4, 5]
    set_status(ids[1], "running")  # started out of turn
    assert positions() == [1, None, 2, 3, 4]
    set_status(ids[1], QUEUED)  # its attempt failed: retried, in its old place
    assert positions() == [1, 2, 3, 4, 5]
    set_status(ids[0], "canceled")
    assert positions() == [None, 1, 2, 3, 4]


def test_jobs_stored_together_take_a_ticket_each(
    sessions: sessionmaker[Session], key_id: str
) -> None:
    # One flush of several jobs (one INSERT each: SQLite's ticket is read from the table).
    with sessions.begin() as session:
        jobs = [job(session, key_id) for _ in range(4)]
        session.add_all(jobs)
        session.flush()
        tickets = [queued.seq for queued in jobs]
        assert tickets == sorted(set(tickets))
        assert service.queue_positions(session, jobs=jobs) == {
            queued.id: n + 1 for n, queued in enumerate(jobs)
        }


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_jobs_being_submitted_at_once_are_told_distinct_positions(
    sessions: sessionmaker[Session], key_id: str
) -> None:
    # Two submits in flight together (PostgreSQL; SQLite writes one at a time): neither sees the
    # other's job, but each counts the other's ticket if it is ahead.
    with sessions.begin() as session:
        session.add(job(session, key_id, prompt="already waiting"))
    with sessions() as first, sessions() as second:
        mine = job(first, key_id, prompt="first")
        first.add(mine)
        first.flush()
        theirs = job(second, key_id, prompt="second")
        second.add(theirs)
        second.flush()
        told = (
            service.queue_positions(first, jobs=[mine])[mine.id],
            service.queue_positions(second, jobs=[theirs])[theirs.id],
        )
        first.rollback()
        second.rollback()
    assert told == (2, 3)


def test_a_position_is_two_index_range_reads_whatever_the_backlog(
    engine: Engine, sessions: sessionmaker[Session], key_id: str
) -> None:
    # 20 000 queued behind a front where some jobs left out of turn.
    picks = random.Random(11)
    statuses = ["succeeded"] * 50 + [
        picks.choice(["running", "canceled", QUEUED, QUEUED]) for _ in range(2 * EXACT_POSITIONS)
    ]
    statuses += [QUEUED] * (20_000 - statuses.count(QUEUED))
    seed(engine, key_id, statuses)
    with sessions() as session:
        newest_first = session.scalars(
            select(Job).where(Job.status == QUEUED).order_by(Job.id.desc()).limit(100)
        ).all()
        for asked in (newest_first[:1], newest_first):
            seen, listener = statements(engine)
            try:
                positions = service.queue_positions(session, jobs=asked)
            finally:
                event.remove(engine, "before_cursor_execute", listener)
            assert len(positions) == len(asked)
            assert len(seen) == 2, seen  # the front, then who left near it
            for number, (statement, parameters) in enumerate(seen):
                assert "over" not in statement.lower()  # no ranking of the queue
                if engine.dialect.name == "postgresql":
                    nodes = plan_postgresql(engine, statement, parameters)
                    kinds = {node["Node Type"] for node in nodes}
                    assert not kinds & {"WindowAgg", "Sort", "Seq Scan", "Bitmap Heap Scan"}, kinds
                    scans = [node for node in nodes if "Scan" in node["Node Type"]]
                    assert scans, kinds
                    for scan in scans:
                        assert scan.get("Index Name") == "ix_jobs_status_seq", scan
                        # The second read is a range of tickets, not every job that left.
                        assert number == 0 or "seq <" in scan.get("Index Cond", ""), scan
                else:
                    details = plan_sqlite(engine, statement, parameters)
                    assert details, statement
                    for detail in details:
                        assert detail.startswith(COVERING), details
                        assert number == 0 or "seq<?" in detail, details

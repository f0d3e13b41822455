"""Which jobs a worker's claim tries, against databases built by the migrations, on both
backends: the fairest key's oldest due jobs (fewest running, then fewest waiting, then the
oldest head), jobs not yet due passed over, and a statement whose reads stay bounded however
long the backlog (the plans and the rows they read, not timings)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text, update
from sqlalchemy.orm import Session

from app.core.ids import id_floor
from app.jobs.execution import CANDIDATES_PER_KEY, WAITING_COUNTED, fairest_candidates
from app.jobs.models import Job, JobStatus
from tests.harness.schema import (
    job_fields,
    key_row,
    klein_price_id,
    migrated_engine,
    plan_postgresql,
    plan_sqlite,
    statements,
)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
# The indexes a claim may read: the queued jobs by key, and a key's running jobs.
CLAIM_INDEXES = {"ix_jobs_queued_key", "ix_jobs_api_key_id_status_id"}


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


class Queue:
    """Keys and jobs written straight to the database, ids in the order they are added."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = int((NOW - timedelta(days=1)).timestamp() * 1000)
        with Session(engine) as session:
            self.price_id = klein_price_id(session)

    def key(self, name: str) -> str:
        with Session(self.engine) as session, session.begin():
            session.add(key_row(name, id=f"key_{name}"))
        return f"key_{name}"

    def jobs(self, key_id: str, count: int, **values: Any) -> list[str]:
        """``count`` jobs of the key (queued unless ``values`` say otherwise), oldest first."""
        rows = []
        for _ in range(count):
            self.clock += 1
            rows.append(job_fields(key_id, self.price_id, id=id_floor("job", self.clock), **values))
        with Session(self.engine) as session, session.begin():
            session.execute(insert(Job), rows)
        return [row["id"] for row in rows]

    def end(self, job_ids: Sequence[str]) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Job).where(Job.id.in_(job_ids)).values(status=JobStatus.CANCELED)
            )

    def candidates(self) -> list[str]:
        with Session(self.engine) as session:
            return fairest_candidates(session, now=NOW)


def test_the_fairest_key_has_fewest_running_then_fewest_waiting_then_the_oldest_head(
    engine: Engine,
) -> None:
    queue = Queue(engine)
    busy, wide, wider, small = (queue.key(name) for name in ("busy", "wide", "wider", "small"))
    busy_jobs = queue.jobs(busy, 1)  # the oldest job, but its key runs two already
    queue.jobs(busy, 2, status=JobStatus.RUNNING)
    # Both beyond the count compared: they tie, and the older head goes first.
    wider_jobs = queue.jobs(wider, WAITING_COUNTED + 3)
    wide_jobs = queue.jobs(wide, WAITING_COUNTED)
    small_jobs = queue.jobs(small, 3)

    assert queue.candidates() == small_jobs  # nothing running, fewest waiting
    queue.end(small_jobs)
    assert queue.candidates() == wider_jobs[:CANDIDATES_PER_KEY]
    queue.end(wider_jobs)
    assert queue.candidates() == wide_jobs[:CANDIDATES_PER_KEY]
    queue.end(wide_jobs)
    assert queue.candidates() == busy_jobs
    queue.end(busy_jobs)
    assert queue.candidates() == []


def test_a_key_waiting_fewer_jobs_goes_first_when_running_counts_tie(engine: Engine) -> None:
    queue = Queue(engine)
    first, second = queue.key("first"), queue.key("second")
    queue.jobs(first, WAITING_COUNTED - 1)  # older, but one more waiting than ...
    second_jobs = queue.jobs(second, WAITING_COUNTED - 2)
    assert queue.candidates() == second_jobs[:CANDIDATES_PER_KEY]


def test_jobs_not_yet_due_are_passed_over(engine: Engine) -> None:
    queue = Queue(engine)
    later, mixed = queue.key("later"), queue.key("mixed")
    not_yet = {"not_before": NOW + timedelta(seconds=30)}
    later_jobs = queue.jobs(later, 2, **not_yet)  # oldest, fewest waiting, but none due
    retrying = queue.jobs(mixed, 1, **not_yet)
    due = queue.jobs(mixed, 3) + queue.jobs(mixed, 1, not_before=NOW - timedelta(seconds=1))
    assert queue.candidates() == due
    queue.end(due)
    assert queue.candidates() == []
    with Session(engine) as session:
        # Once due, the retry's key waits fewer jobs.
        assert fairest_candidates(session, now=NOW + timedelta(minutes=1)) == retrying
        queue.end(retrying)
        assert fairest_candidates(session, now=NOW + timedelta(minutes=1)) == later_jobs


def rows_read(nodes: Sequence[dict[str, Any]]) -> int:
    """Rows the plan's scans produced or filtered out, over all their loops."""
    return sum(
        (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
        * node.get("Actual Loops", 1)
        for node in nodes
        if "Scan" in node["Node Type"] and node.get("Relation Name") == "jobs"
    )


def test_a_claim_reads_a_bounded_part_of_the_queue_whatever_the_backlog(engine: Engine) -> None:
    queue = Queue(engine)
    flood, other, lone = queue.key("flood"), queue.key("other"), queue.key("lone")
    queue.jobs(flood, 5_000, status=JobStatus.SUCCEEDED)  # a history before the backlog
    queue.jobs(other, 3, status=JobStatus.RUNNING)
    queue.jobs(flood, 20_000)
    queue.jobs(other, 500)
    lone_job = queue.jobs(lone, 1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))

    seen, listener = statements(engine)
    try:
        assert queue.candidates() == lone_job
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    ((statement, parameters),) = [
        (sql, params) for sql, params in seen if "jobs" in sql and sql.lstrip().startswith("WITH")
    ]
    if engine.dialect.name == "postgresql":
        nodes = plan_postgresql(engine, statement, parameters, analyze=True)
        scans = [node for node in nodes if node.get("Relation Name") == "jobs"]
        assert scans
        for scan in scans:
            assert scan.get("Index Name") in CLAIM_INDEXES, scan
        # Three keys: a seek each, up to WAITING_COUNTED of each one's waiting jobs, the
        # running ones, and the chosen key's candidates; not 20,000.
        assert rows_read(nodes) <= 3 * (2 * WAITING_COUNTED + CANDIDATES_PER_KEY) + 10, nodes
    else:
        details = [line for line in plan_sqlite(engine, statement, parameters) if " jobs " in line]
        assert details
        for detail in details:
            assert detail.startswith("SEARCH jobs USING"), details
            assert any(f"INDEX {index} " in detail for index in CLAIM_INDEXES), details

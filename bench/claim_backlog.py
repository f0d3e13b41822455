"""Claim benchmark: what choosing the fairest due jobs costs a worker's claim with a large
backlog, the grouping of every due job (before 0017) against the skip scan of the queued jobs
by key (``app.jobs.execution.fairest_candidates``).

A database built by the migrations (a new PostgreSQL database through the test harness, and/or
a SQLite file) is seeded as ``bench/queue_position.py`` seeds it: F finished jobs, then Q
queued, one key. Then, in this process, each way is timed (median of R runs, after one
warm-up) and their answers compared.

    .venv/bin/python bench/claim_backlog.py [--queued 100000] [--finished 100000] [--runs 20]
        [--backend both|postgres|sqlite]
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

if not __package__:
    # Run as ``python bench/claim_backlog.py``: ``bench`` and ``tests`` are in the root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from app.core.orm import utcnow
from app.jobs.execution import CANDIDATES_PER_KEY, fairest_candidates
from app.jobs.models import Job, JobStatus
from bench.queue_position import run_backlog_bench, seed, timed


def grouped_candidates(session: Session, *, now: datetime) -> list[str]:
    """Before 0017: every due job grouped by key, on each claim."""
    due = (Job.status == JobStatus.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now))
    running = (
        select(Job.api_key_id, func.count().label("running"))
        .where(Job.status == JobStatus.RUNNING)
        .group_by(Job.api_key_id)
        .subquery()
    )
    heads = (
        select(Job.api_key_id, func.min(Job.id).label("head"), func.count().label("waiting"))
        .where(*due)
        .group_by(Job.api_key_id)
        .subquery()
    )
    fairest_key = (
        select(heads.c.api_key_id)
        .outerjoin(running, running.c.api_key_id == heads.c.api_key_id)
        .order_by(func.coalesce(running.c.running, 0), heads.c.waiting, heads.c.head)
        .limit(1)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.api_key_id == fairest_key, *due)
            .order_by(Job.id)
            .limit(CANDIDATES_PER_KEY)
        )
    )


def measure(engine: Engine, *, queued: int, finished: int, runs: int) -> list[str]:
    seed(engine, queued=queued, finished=finished)
    now = utcnow()

    def old(session: Session, **_: object) -> list[str]:
        return grouped_candidates(session, now=now)

    def new(session: Session, **_: object) -> list[str]:
        return fairest_candidates(session, now=now)

    old_ms, old_answer = timed(engine, old, (), runs)
    new_ms, new_answer = timed(engine, new, (), runs)
    same = "yes" if old_answer == new_answer else "NO"
    return [f"| {engine.dialect.name} | {old_ms:.2f} ms | {new_ms:.2f} ms | {same} |"]


def main() -> None:
    run_backlog_bench(
        __doc__.split("\n\n")[0],
        measure,
        "| backend | grouping every due job (old) | skip scan by key (new) | same jobs |",
    )


if __name__ == "__main__":
    main()

"""Queue position benchmark: what a position costs with a large backlog, the ranking of every
queued job (before 0015) against queue tickets (``app.jobs.service.queue_positions``).

A database built by the migrations (a new PostgreSQL database through the test harness, and/or
a SQLite file) is seeded in one statement with F finished jobs, then Q queued ones; among the
first 2 000 queued, one in ten left out of turn (canceled or running). Then, in this process,
each way is timed (median of R runs, after one warm-up) for the newest queued job (what a
submit's answer shows) and for the newest 100 (a listing's page); the two ways' answers are
compared (they may differ only beyond the exact window, where tickets count as the upper bound).

    .venv/bin/python bench/queue_position.py [--queued 100000] [--finished 100000] [--runs 20]
        [--backend both|postgres|sqlite]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

if not __package__:
    # Run as ``python bench/queue_position.py``: ``bench`` and ``tests`` are in the root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

import app.models  # noqa: F401  # every table, for the ORM's foreign keys
from app.jobs.models import Job, JobStatus
from app.jobs.service import queue_positions
from tests.harness.schema import migrated_engine

Answer = TypeVar("Answer")


class Measure(Protocol):
    def __call__(self, engine: Engine, *, queued: int, finished: int, runs: int) -> list[str]:
        """Seed ``engine``'s database with the backlog, time both ways: the table's rows."""


OUT_OF_TURN = 2_000  # the first queued jobs, among which one in ten left the queue

SEED = """
WITH RECURSIVE series(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM series WHERE g < :total)
INSERT INTO jobs (id, seq, api_key_id, status, model, prompt, width, height, steps,
                  input_image_count, metadata, price_id, estimated_nanos, input_tiles,
                  output_tiles, attempts, created_at)
SELECT 'job_' || {padded}, g, 'key_bench',
       CASE WHEN g <= :finished THEN 'succeeded'
            WHEN g <= :finished + {out_of_turn} AND g % 10 = 0 THEN 'canceled'
            WHEN g <= :finished + {out_of_turn} AND g % 10 = 5 THEN 'running'
            ELSE 'queued' END,
       'flux-2-klein-4b', 'seeded', 256, 256, 4, 0, '{{}}',
       (SELECT min(id) FROM prices), 1, 0, 1, 0, CURRENT_TIMESTAMP
FROM series
"""
PADDED = {"postgresql": "lpad(g::text, 26, '0')", "sqlite": "printf('%026d', g)"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ranked_positions(session: Session, *, jobs: Sequence[Job]) -> dict[str, int]:
    """Before 0015: each queued job's rank among all queued jobs up to the newest asked."""
    queued = [job.id for job in jobs if job.status == JobStatus.QUEUED]
    ranked = (
        select(Job.id, func.row_number().over(order_by=Job.id).label("position"))
        .where(Job.status == JobStatus.QUEUED, Job.id <= max(queued))
        .subquery()
    )
    rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(queued)))
    return {job_id: int(position) for job_id, position in rows}


def seed(engine: Engine, *, queued: int, finished: int) -> None:
    started = time.monotonic()
    statement = SEED.format(padded=PADDED[engine.dialect.name], out_of_turn=OUT_OF_TURN)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, display_prefix, is_admin, "
                "webhook_secret, created_at) VALUES ('key_bench', 'bench', 'hash-bench', "
                "'fgk_bench', false, 'whsec_x', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(text(statement), {"total": finished + queued, "finished": finished})
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT setval('jobs_seq_seq', max(seq) + 1, false) FROM jobs"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(
            text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
        )
    log(f"  seeded {finished} finished + {queued} queued in {time.monotonic() - started:.1f} s")


def timed(
    engine: Engine, way: Callable[..., Answer], jobs: Sequence[Job], runs: int
) -> tuple[float, Answer]:
    """The median milliseconds of ``way`` over ``runs`` (after one warm-up), and its answer."""
    samples = []
    # One connection throughout: no pool check-out (nor its ping) in the figures.
    with engine.connect() as connection, Session(bind=connection) as session:
        answer = way(session, jobs=jobs)  # the warm-up
        session.rollback()
        for _ in range(runs):
            started = time.perf_counter()
            answer = way(session, jobs=jobs)
            spent = time.perf_counter() - started
            session.rollback()
            samples.append(spent * 1000)
    return statistics.median(samples), answer


def measure(engine: Engine, *, queued: int, finished: int, runs: int) -> list[str]:
    seed(engine, queued=queued, finished=finished)
    with Session(engine, expire_on_commit=False) as session:
        newest = list(
            session.scalars(
                select(Job).where(Job.status == JobStatus.QUEUED).order_by(Job.id.desc()).limit(100)
            )
        )
    lines = []
    for label, jobs in (("newest queued job", newest[:1]), ("page of 100", newest)):
        old_ms, old = timed(engine, ranked_positions, jobs, runs)
        new_ms, new = timed(engine, queue_positions, jobs, runs)
        over = max(new[job.id] - old[job.id] for job in jobs)
        lines.append(
            f"| {engine.dialect.name} | {label} | {old_ms:.2f} ms | {new_ms:.2f} ms "
            f"| {old[jobs[0].id]} | {new[jobs[0].id]} | {over} |"
        )
    return lines


def run_backlog_bench(description: str, measure: Measure, header: str) -> None:
    """The options of the benches over a seeded backlog (this one and claim_backlog.py), then
    ``measure``'s rows on a new migrated database of each backend asked for, as one table under
    ``header`` (its first line)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backend", choices=["both", "postgres", "sqlite"], default="both")
    args = parser.parse_args()
    rows = []
    for backend in ["postgres", "sqlite"] if args.backend == "both" else [args.backend]:
        log(f"{backend}:")
        with migrated_engine(backend, prefix="fluxgate_bench") as engine:
            rows += measure(engine, queued=args.queued, finished=args.finished, runs=args.runs)
    print(f"{args.queued} queued behind {args.finished} finished, median of {args.runs} runs")
    print()
    print(header)
    print("|---" * header.count(" | ") + "|---|")
    print("\n".join(rows))


def main() -> None:
    run_backlog_bench(
        __doc__.split("\n\n")[0],
        measure,
        "| backend | asked | ranking (old) | tickets (new) | old position | new position "
        "| most above old |",
    )


if __name__ == "__main__":
    main()

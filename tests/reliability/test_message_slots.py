"""A broker message is a dispatch slot, not a particular job: whichever job a message starts,
every job still gets one, without the sweeper's help; and a message the broker refuses leaves a
job to the sweeper's next pass, whichever job it was sent for."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from app.core import outbox
from app.core.orm import utcnow
from app.jobs.execution import claim, claim_next, message_lost, sweep
from app.jobs.models import Job, JobStatus
from tests.harness.schema import job_fields, key_row, klein_price_id, migrated_engine
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, submit, wait_for_job


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def sweeperless(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """No beat: what happens here happens without the sweeper's help."""
    with running_gateway(
        log_dir, backend=request.param, latency=0.05, worker=False, beat=False
    ) as gateway:
        yield gateway


def test_a_message_that_starts_another_job_leaves_no_job_without_one(
    sweeperless: Stack,
) -> None:
    """The probe: a message (a dispatch slot) sent for one job started a newer job that had
    none, and the first job then waited a full REQUEUE_AFTER."""
    stack = sweeperless
    flood, lone = stack.create_key("two jobs"), stack.create_key("one job")
    with stack.client(flood) as flood_client, stack.client(lone) as lone_client:
        first, second = (submit(flood_client, f"flood {n} {uuid.uuid4().hex[:6]}") for n in (1, 2))
        newer = submit(lone_client, f"never sent {uuid.uuid4().hex[:6]}")
        # The broker loses everything; the newer job's message was never sent (the broker was
        # down when it was submitted), the other two each have theirs on its way.
        stack.flush_broker()
        stack.execute("UPDATE jobs SET enqueued_at = NULL WHERE id = :id", id=newer)
        stack.send_duplicates(first, 1)
        stack.send_duplicates(second, 1)
        # The lone key's job is the fairest, so the first message starts it.
        worker = stack.start_worker()
        try:
            for client, job in (
                (flood_client, first),
                (flood_client, second),
                (lone_client, newer),
            ):
                assert (
                    wait_for_job(client, job, statuses=FINAL, timeout=20)["status"] == "succeeded"
                )
        finally:
            worker.stop()


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


def queued_jobs(engine: Engine, count: int) -> list[str]:
    """``count`` queued jobs of one key, oldest first, each counted as having its message."""
    sent = utcnow() - timedelta(seconds=1)
    with Session(engine) as session, session.begin():
        key = key_row("slots")
        session.add(key)
        session.flush()
        price_id = klein_price_id(session)
        rows = [job_fields(key.id, price_id, enqueued_at=sent) for _ in range(count)]
        session.execute(insert(Job), rows)
    return sorted(row["id"] for row in rows)


def without_message(session: Session) -> list[str]:
    """The queued jobs counted as having no message."""
    return sorted(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
        )
    )


def resent_by_sweep(session: Session) -> list[str]:
    """What the sweeper's next pass sends (REQUEUE_AFTER far off: only jobs without one)."""
    result = sweep(session, requeue_after_seconds=3600, max_attempts=3, public_url=None)
    return sorted(result.resent)


def not_yet_due(session: Session, *job_ids: str) -> None:
    """Jobs waiting out a retry, for another minute."""
    session.execute(
        update(Job).where(Job.id.in_(job_ids)).values(not_before=utcnow() + timedelta(minutes=1))
    )


def claim_sending(session: Session, *, slot_of: str) -> tuple[str, list[outbox.ForwardJob]]:
    """The job the message sent for ``slot_of`` starts, and the messages its claim sends on."""
    before = len(outbox.pending(session))
    started = claim_next(session, lease_seconds=60, slot_of=slot_of)
    assert started is not None
    sent = outbox.pending(session)[before:]
    return started.job_id, [message for message in sent if isinstance(message, outbox.ForwardJob)]


def test_a_lost_message_of_a_job_another_message_started_leaves_a_waiting_job_to_the_sweeper(
    engine: Engine,
) -> None:
    """The Redis outage test's lost job: the message sent for the second job started the first
    (interchangeable slots), then the first's own message (retried while Redis was down) could
    not be sent. The second job counted on that message and waited out REQUEUE_AFTER."""
    first, second, third = queued_jobs(engine, 3)
    with Session(engine) as session, session.begin():
        # The second job's message starts the first job; the first's is now the second's.
        assert claim(session, job_id=first, lease_seconds=60) is not None
        assert message_lost(session, job_id=first) == second
        assert without_message(session) == [second]
        # A second lost message, for the same started job, leaves the next one.
        assert message_lost(session, job_id=first) == third
        assert resent_by_sweep(session) == [second, third]
        session.rollback()


def test_a_job_left_to_the_sweeper_that_its_own_message_starts_sends_one_on(
    engine: Engine,
) -> None:
    """The third job's message starts the first; the first's message is lost, which leaves the
    second to the sweeper; then the second's own message starts it. The third counted on that
    message: without one sent on, it waited out REQUEUE_AFTER."""
    first, second, third = queued_jobs(engine, 3)
    with Session(engine) as session, session.begin():
        # The third job is not due yet (a retry's wait), so the second is the one started.
        not_yet_due(session, third)
        assert claim(session, job_id=first, lease_seconds=60) is not None
        assert message_lost(session, job_id=first) == second
        assert claim_sending(session, slot_of=second) == (second, [outbox.ForwardJob(second)])
        session.rollback()


def test_a_message_spent_on_another_job_left_to_the_sweeper_leaves_its_own_job_left(
    engine: Engine,
) -> None:
    """Two jobs left to the sweeper, and the message of one starts the other: the message sent
    on serves the job that counted on the spent one, so the first job must stay left to the
    sweeper. Marked as sent, it waited out REQUEUE_AFTER."""
    counted, left, other = queued_jobs(engine, 3)
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id.in_([left, other])).values(enqueued_at=None))
        # Only the other job is due, so the left job's message starts it.
        not_yet_due(session, counted, left)
        assert claim_sending(session, slot_of=left) == (other, [outbox.ForwardJob(left)])
        assert without_message(session) == [left]
        session.rollback()


def test_a_lost_message_prefers_a_due_job(engine: Engine) -> None:
    """A job waiting out a retry gets no message from the sweeper until it is due: the older
    job is passed over for a due one."""
    waiting, started, due = queued_jobs(engine, 3)
    with Session(engine) as session, session.begin():
        not_yet_due(session, waiting)
        assert claim(session, job_id=started, lease_seconds=60) is not None
        assert message_lost(session, job_id=started) == due
        # With no due job left counted, a waiting one is marked rather than none.
        assert message_lost(session, job_id=started) == waiting
        session.rollback()


def test_a_lost_message_of_a_waiting_job_leaves_that_job_to_the_sweeper(engine: Engine) -> None:
    _older, second = queued_jobs(engine, 2)
    with Session(engine) as session, session.begin():
        assert message_lost(session, job_id=second) == second
        assert without_message(session) == [second]
        assert resent_by_sweep(session) == [second]
        session.rollback()


def test_a_lost_message_with_every_waiting_job_left_to_the_sweeper_marks_nothing(
    engine: Engine,
) -> None:
    (only,) = queued_jobs(engine, 1)
    with Session(engine) as session, session.begin():
        assert message_lost(session, job_id=only) == only
        # Its retry is lost too: nothing more to leave.
        assert message_lost(session, job_id=only) is None
        assert claim(session, job_id=only, lease_seconds=60) is not None
        assert message_lost(session, job_id=only) is None
        assert without_message(session) == []
        session.rollback()

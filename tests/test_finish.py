"""A worker's finish of a successful attempt, against databases built by the migrations, on both
backends: it writes the job, its attempt, its image, its charge and its budget and reads none of
them back (the ended job's answer is rendered from what the worker has just checked and
stored), that answer is the one a client reading the job gets, and an attempt that lost its
job writes nothing."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session

from app.billing.models import BudgetPeriod, Charge
from app.core import outbox
from app.core.images import inspect_image
from app.jobs import execution, service
from app.jobs.models import Job, JobAttempt, JobImage
from tests.harness.schema import job_fields, key_row, klein_price_id, migrated_engine, statements


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


PERIOD = datetime(2026, 11, 1, tzinfo=UTC)
PRICE_NANOS = 14_000_000


def queued_job(engine: Engine, *, budgeted: bool = False, attempts: int = 0) -> str:
    """A klein job of key ``key_finish``; with ``budgeted``, its price held in the key's budget
    period; ``attempts`` it has had already."""
    with Session(engine) as session, session.begin():
        session.add(key_row("finish", id="key_finish", budget_nanos=10**9 if budgeted else None))
        fields = job_fields(
            "key_finish",
            klein_price_id(session),
            estimated_nanos=PRICE_NANOS,
            attempts=attempts,
            budget_period_start=PERIOD if budgeted else None,
        )
        session.execute(insert(Job), [fields])
        if budgeted:
            session.add(
                BudgetPeriod(
                    api_key_id="key_finish",
                    period_start=PERIOD,
                    held_nanos=PRICE_NANOS,
                    charged_nanos=0,
                )
            )
    return str(fields["id"])


@pytest.mark.parametrize(
    ("budgeted", "attempts"), [(False, 0), (True, 1)], ids=["first-attempt", "budget-retried"]
)
def test_a_finish_writes_its_rows_and_reads_nothing_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, budgeted: bool, attempts: int
) -> None:
    job_id = queued_job(engine, budgeted=budgeted, attempts=attempts)
    with Session(engine) as session, session.begin():
        won = execution.claim(session, job_id=job_id, lease_seconds=60)
    assert won is not None
    claim = won[0]
    assert claim.attempt == attempts + 1
    image = png(256, 256)
    changes: list[outbox.JobChanged] = []
    monkeypatch.setattr(
        outbox, "_connections", outbox.Connections(changes.append, lambda _job_id: None)
    )

    seen, listener = statements(engine)
    try:
        with Session(engine) as session, session.begin():
            done = execution.finish_succeeded(
                session,
                claim=claim,
                image=image,
                info=inspect_image(image),
                neurons="2.5",
                upstream_ms=900,
                public_url="https://images.example",
            )
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert done

    writes = sorted(
        " ".join(statement.split()[:3]).upper()
        for statement, _ in seen
        if not statement.startswith("SELECT")
    )
    reads = [statement for statement, _ in seen if statement.startswith("SELECT")]
    # One UPDATE of the job (and of its budget period, if it has one), and an INSERT each of
    # the attempt, the image and the charge; no second statement on any table.
    expected = [
        "INSERT INTO CHARGES",
        "INSERT INTO JOB_ATTEMPTS",
        "INSERT INTO JOB_IMAGES",
        "UPDATE JOBS SET",
    ]
    if budgeted:
        expected.insert(3, "UPDATE BUDGET_PERIODS SET")
    assert writes == expected, seen
    # Nothing written is read back. Only a retried job's attempts are read, once: its timings
    # add up every attempt's.
    if attempts:
        assert len(reads) == 1, reads
        assert "FROM job_attempts" in reads[0], reads
    else:
        assert reads == [], reads

    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        stored = session.scalars(select(JobImage).where(JobImage.job_id == job_id)).one()
        charge = session.scalars(select(Charge).where(Charge.job_id == job_id)).one()
        attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
        period = session.get(BudgetPeriod, ("key_finish", PERIOD))
        read = service.to_job_out(session, [job], public_url="https://images.example")[0]
    assert (stored.role, stored.position, stored.content_type) == ("output", 0, "image/png")
    assert (stored.data, stored.width, stored.height) == (image, 256, 256)
    assert (stored.size_bytes, stored.sha256) == (len(image), hashlib.sha256(image).hexdigest())
    assert (job.status, job.charged_nanos, job.upstream_ms) == ("succeeded", PRICE_NANOS, 900)
    assert job.upstream_neurons == "2.5"
    assert (charge.api_key_id, charge.model, charge.amount_nanos) == (
        "key_finish",
        "flux-2-klein-4b",
        PRICE_NANOS,
    )
    assert charge.price_id == job.price_id
    assert (attempt.number, attempt.outcome, attempt.http_status, attempt.upstream_ms) == (
        attempts + 1,
        "succeeded",
        200,
        900,
    )
    assert attempt.started_at == claim.started_at
    assert attempt.ended_at is not None
    assert attempt.ended_at >= claim.started_at
    assert (attempt.error_code, attempt.upstream_code) == (None, None)
    if budgeted:
        assert period is not None
        assert (period.held_nanos, period.charged_nanos) == (0, PRICE_NANOS)
    # What waiting clients were sent is what a client reading the job gets.
    [ended] = [change for change in changes if change.status == "succeeded"]
    assert ended.job is not None
    sent = json.loads(ended.job)
    assert sent == json.loads(read.model_dump_json())
    assert sent["output"] == {
        "image_url": f"https://images.example/v1/jobs/{job_id}/image",
        "content_type": "image/png",
        "width": 256,
        "height": 256,
        "bytes": len(image),
        "sha256": stored.sha256,
    }


def test_a_lost_attempt_writes_nothing(engine: Engine) -> None:
    """The finish of an attempt the sweeper has taken back changes no row."""
    job_id = queued_job(engine)
    with Session(engine) as session, session.begin():
        won = execution.claim(session, job_id=job_id, lease_seconds=60)
    assert won is not None
    with Session(engine) as session, session.begin():
        session.get_one(Job, job_id).attempts += 1  # another attempt has it now
    image = png(256, 256)
    with Session(engine) as session, session.begin():
        done = execution.finish_succeeded(
            session,
            claim=won[0],
            image=image,
            info=inspect_image(image),
            neurons=None,
            upstream_ms=900,
            public_url=None,
        )
    assert not done
    with Session(engine) as session:
        for table in (JobImage, JobAttempt, Charge):
            assert session.scalars(select(table).where(table.job_id == job_id)).all() == []
        assert session.get_one(Job, job_id).charged_nanos is None

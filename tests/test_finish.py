"""A worker's finish of a successful attempt, against databases built by the migrations, on both
backends: it writes the job, its attempt, its image and its charge and reads nothing back (the
ended job's answer is rendered from what the worker has just checked and stored), and that
answer is the one a client reading the job gets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session

from app.core import outbox
from app.core.images import inspect_image
from app.jobs import execution, service
from app.jobs.models import Job, JobImage
from tests.harness.schema import job_fields, key_row, klein_price_id, migrated_engine, statements


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def queued_job(engine: Engine) -> str:
    with Session(engine) as session, session.begin():
        session.add(key_row("finish", id="key_finish"))
        fields = job_fields("key_finish", klein_price_id(session), estimated_nanos=14_000_000)
        session.execute(insert(Job), [fields])
    return str(fields["id"])


def test_a_finish_writes_its_rows_and_reads_nothing_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = queued_job(engine)
    with Session(engine) as session, session.begin():
        won = execution.claim(session, job_id=job_id, lease_seconds=60)
    assert won is not None
    claim = won[0]
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

    written = [statement.split()[:3] for statement, _ in seen]
    # One UPDATE of the job, and an INSERT each of the attempt, the image and the charge: no
    # SELECT, no second statement on any table.
    assert sorted(" ".join(words).upper() for words in written) == [
        "INSERT INTO CHARGES",
        "INSERT INTO JOB_ATTEMPTS",
        "INSERT INTO JOB_IMAGES",
        "UPDATE JOBS SET",
    ], written

    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        stored = session.scalars(select(JobImage).where(JobImage.job_id == job_id)).one()
        read = service.to_job_out(session, [job], public_url="https://images.example")[0]
    assert (stored.data, stored.width, stored.height) == (image, 256, 256)
    assert job.charged_nanos == 14_000_000
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
        assert session.scalars(select(JobImage).where(JobImage.job_id == job_id)).all() == []
        assert session.get_one(Job, job_id).charged_nanos is None

"""Image retention and the purge of what is past its use, against the real stack on both
backends: beat's purge deletes exactly the images that are due (and their thumbnails), in
batches, keeps jobs, charges and usage as they were, and the image routes answer 410
``image_expired``. The counters are checked against the same purge run in this process."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.billing.models import Price
from app.core.db import make_engine
from app.core.ids import new_id
from app.core.migrate import upgrade_to_head
from app.core.settings import load_settings, normalize_database_url
from app.dashboard.models import JobThumbnail
from app.jobs.models import Job, JobImage, JobStatus
from tests.harness.claims import postgres_database
from tests.harness.images import b64, picture
from tests.harness.processes import wait_until
from tests.harness.schema import key_row
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, assert_error, unique, wait_for_job
from tests.receiver import Receiver
from worker.tasks import purge

DAY = timedelta(days=1)
BATCH = 2
# "retention: images of 2 jobs deleted in 1 batches: 0 input (0 bytes), 1 output (123 bytes)"
RUN_LINE = re.compile(
    r"retention: images of (\d+) jobs deleted in (\d+) batches: (\d+) input \((\d+) bytes\), "
    r"(\d+) output \((\d+) bytes\)"
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver("127.0.0.1")
    yield receiver
    receiver.close()


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def kept(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway keeping images a day, purging every second in batches of two jobs; beat is
    started by the test, once it has made what is due."""
    with running_gateway(
        log_dir,
        backend=request.param,
        latency=0.05,
        worker=True,
        beat=False,
        image_retention_days="1",
        retention_interval_seconds="1",
        retention_batch_size=str(BATCH),
        # Links that outlive the image: the link must then say the image is gone.
        image_url_ttl_seconds=str(3 * 86400),
        webhook_allowed_networks="127.0.0.1/32",
    ) as stack:
        yield stack


def at(stack: Stack, moment: datetime) -> object:
    """A time as this backend's raw SQL takes it (SQLite keeps naive UTC)."""
    return moment.replace(tzinfo=None) if stack.backend == "embedded" else moment


def run(client: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={"width": 256, "height": 256, **body})
    assert answer.status_code == 202, answer.text
    return wait_for_job(client, answer.json()["id"], statuses=FINAL)


def stored(stack: Stack, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Images still holding bytes among these jobs': (count, bytes) by role."""
    rows = stack.sql(
        "SELECT role, count(*), sum(length(data)) FROM job_images "
        "WHERE job_id IN :ids AND data IS NOT NULL GROUP BY role",
        ids=ids,
    )
    return {role: (int(count), int(size)) for role, count, size in rows}


def test_retention_deletes_exactly_the_images_that_are_due(kept: Stack, receiver: Receiver) -> None:
    stack = kept
    key = stack.create_key("retention")
    admin = stack.create_key("retention admin", "--admin")
    hook = receiver.url(f"/ok/{uuid.uuid4().hex[:8]}")
    with stack.client(key) as client:
        # Due: completed more than a day ago (backdated below).
        due = [run(client, prompt=unique("old text"))["id"] for _ in range(2)]
        due.append(
            run(
                client,
                prompt=unique("old edit"),
                input_images=[b64(picture(64, 48)), b64(picture(40, 40, fmt="JPEG"))],
            )["id"]
        )
        failing = unique("old failure")
        stack.simulator.script(failing, ["3036"])
        failed = run(client, prompt=failing, input_images=[b64(picture(32, 32))])
        assert failed["status"] == "failed"
        due.append(failed["id"])
        shared = client.post(
            "/v1/images/generations",
            json={"prompt": unique("old link"), "size": "256x256", "response_format": "url"},
        )
        assert shared.status_code == 200, shared.text
        link = shared.json()["data"][0]["url"]
        [(linked_job,)] = stack.sql(
            "SELECT job_id FROM image_links ORDER BY created_at DESC LIMIT 1"
        )
        due.append(linked_job)
        # Kept: completed just within the day, and now; one with a webhook (its answer's
        # excerpt is cleared once a day old, like images).
        recent = run(client, prompt=unique("recent"), input_images=[b64(picture(48, 48))])
        fresh = run(client, prompt=unique("fresh"), webhook_url=hook)
        receiver.wait_for(hook.removeprefix(receiver.url("")))
        kept_ids = [recent["id"], fresh["id"]]
        for job_id in due + kept_ids:
            assert client.get(f"/v1/jobs/{job_id}/image").status_code in (200, 409)

        # Thumbnails, as the dashboard's Jobs page makes them.
        origin = {"Origin": stack.api_url}
        with httpx.Client(base_url=stack.api_url, headers=origin) as board:
            assert board.post("/admin/login", data={"key": admin}).status_code == 303
            assert board.get("/admin/jobs").status_code == 200
        succeeded = [job_id for job_id in due + kept_ids if job_id != failed["id"]]
        [(thumbs,)] = stack.sql(
            "SELECT count(*) FROM job_thumbnails WHERE job_id IN :ids", ids=succeeded
        )
        assert thumbs == len(succeeded)

        # What else is past its use: an idempotency key of yesterday, a link that expired, an
        # old webhook answer, an ended dashboard session, a closed failed-login window.
        old_key, new_key = f"old-{uuid.uuid4()}", f"new-{uuid.uuid4()}"
        for idempotency_key in (old_key, new_key):
            answer = client.post(
                "/v1/jobs",
                json={"prompt": unique("idempotent"), "width": 256, "height": 256},
                headers={"Idempotency-Key": idempotency_key},
            )
            assert answer.status_code == 202
            wait_for_job(client, answer.json()["id"], statuses=FINAL)
        now = datetime.now(UTC)
        stack.execute(
            "UPDATE idempotency_keys SET created_at = :old WHERE key = :key",
            old=at(stack, now - 25 * timedelta(hours=1)),
            key=old_key,
        )
        stack.execute(
            "INSERT INTO image_links (token_hash, job_id, expires_at, created_at) "
            "VALUES ('expired-link', :job, :expired, :expired)",
            job=fresh["id"],
            expired=at(stack, now - timedelta(minutes=1)),
        )
        with httpx.Client(base_url=stack.api_url, headers=origin) as ended:
            assert ended.post("/admin/login", data={"key": admin}).status_code == 303
        with httpx.Client(base_url=stack.api_url, headers=origin) as guesser:
            assert guesser.post("/admin/login", data={"key": "fgk_wrong"}).status_code == 401
        [(sessions_before,)] = stack.sql("SELECT count(*) FROM admin_sessions")
        stack.execute(
            "UPDATE admin_sessions SET last_seen_at = :old, expires_at = :old "
            "WHERE created_at = (SELECT max(created_at) FROM admin_sessions)",
            old=at(stack, now - timedelta(hours=13)),
        )
        stack.execute(
            "UPDATE admin_login_failures SET window_start = :old",
            old=at(stack, now - DAY),
        )
        [(attempt_with_excerpt,)] = stack.sql(
            "SELECT a.id FROM webhook_attempts a JOIN webhook_deliveries d "
            "ON d.id = a.delivery_id WHERE d.job_id = :job AND a.response_excerpt IS NOT NULL",
            job=fresh["id"],
        )
        hooked_job = run(client, prompt=unique("hooked"), webhook_url=hook + "/2")["id"]
        receiver.wait_for(hook.removeprefix(receiver.url("")) + "/2")
        wait_until(
            lambda: (
                stack.sql(
                    "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d "
                    "ON d.id = a.delivery_id WHERE d.job_id = :job",
                    job=hooked_job,
                )[0][0]
                == 1
            ),
            timeout=30,
            what="the webhook attempt to be recorded",
        )
        stack.execute(
            "UPDATE webhook_attempts SET started_at = :old WHERE delivery_id IN "
            "(SELECT id FROM webhook_deliveries WHERE job_id = :job)",
            old=at(stack, now - 2 * DAY),
            job=hooked_job,
        )

        # Make the due jobs a day and an hour old, the recent one 23 hours.
        stack.execute(
            "UPDATE jobs SET completed_at = :old WHERE id IN :ids",
            ids=due,
            old=at(stack, now - DAY - timedelta(hours=1)),
        )
        stack.execute(
            "UPDATE jobs SET completed_at = :old WHERE id = :id",
            old=at(stack, now - DAY + timedelta(hours=1)),
            id=recent["id"],
        )
        jobs_before = {job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in due}
        tomorrow = f"{now + DAY:%Y-%m-%d}"
        usage_params = {"from": "2000-01-01", "to": tomorrow, "group_by": "model"}
        usage_before = client.get("/v1/usage", params=usage_params).json()
        charges = "SELECT job_id, amount_nanos FROM charges ORDER BY job_id"
        charges_before = stack.sql(charges)
        images_rows = "SELECT job_id, role, position, size_bytes, sha256 FROM job_images"
        image_rows_before = stack.sql(images_rows + " ORDER BY job_id, role, position")
        due_images = stored(stack, due)
        kept_images = stored(stack, kept_ids)
        assert due_images["input"][0] == 3
        assert due_images["output"][0] == 4
        assert kept_images["input"][0] == 1

        # One run of beat's purge: 5 due jobs in batches of 2 take three.
        stack.start_beat()
        wait_until(
            lambda: (
                stack.sql(
                    "SELECT count(*) FROM jobs WHERE id IN :ids AND images_expired_at IS NOT NULL",
                    ids=due,
                )[0][0]
                == len(due)
            ),
            timeout=60,
            what="the due jobs' images to be deleted",
        )

        def logged() -> list[tuple[int, ...]]:
            log = stack.process("worker").log()
            return [tuple(map(int, found)) for found in RUN_LINE.findall(log)]

        # Logged once the run has made its other purges too.
        wait_until(
            lambda: sum(line[0] for line in logged()) == len(due),
            timeout=30,
            what="the run to be logged",
        )
        runs = logged()
        assert sum(line[0] for line in runs) == len(due)
        assert sum(line[1] for line in runs) >= 3
        assert sum(line[2] for line in runs) == due_images["input"][0]
        assert sum(line[3] for line in runs) == due_images["input"][1]
        assert sum(line[4] for line in runs) == due_images["output"][0]
        assert sum(line[5] for line in runs) == due_images["output"][1]

        # Exactly the due images are gone; every row's metadata, the jobs, the ledger stay.
        assert stored(stack, due) == {}
        assert stored(stack, kept_ids) == kept_images
        assert stack.sql(images_rows + " ORDER BY job_id, role, position") == image_rows_before
        assert stack.sql(
            "SELECT count(*) FROM jobs WHERE id IN :ids AND images_expired_at IS NOT NULL",
            ids=kept_ids,
        ) == [(0,)]
        assert stack.sql(
            "SELECT job_id FROM job_thumbnails WHERE job_id IN :ids ORDER BY job_id",
            ids=succeeded,
        ) == [(job_id,) for job_id in sorted(kept_ids)]
        assert {job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in due} == jobs_before
        assert client.get("/v1/usage", params=usage_params).json() == usage_before
        assert stack.sql(charges) == charges_before

        # The images answer 410, saying when and why; the rest as before.
        for job_id in due:
            if job_id == failed["id"]:
                assert_error(client.get(f"/v1/jobs/{job_id}/image"), 409, "image_not_ready", None)
                continue
            for params in ({}, {"format": "webp"}):
                gone = client.get(f"/v1/jobs/{job_id}/image", params=params)
                error = assert_error(gone, 410, "image_expired", None)
                assert "retention" in error["message"]
                [(expired_at,)] = stack.sql(
                    "SELECT images_expired_at FROM jobs WHERE id = :id", id=job_id
                )
                assert str(expired_at)[:10] in error["message"]
        for job_id in kept_ids:
            assert client.get(f"/v1/jobs/{job_id}/image").status_code == 200
        expired_link = httpx.get(link)
        assert expired_link.status_code == 410, expired_link.text
        assert expired_link.json()["error"]["code"] == "image_expired"

    # The rest past its use: gone; what is still in use: kept.
    assert stack.sql(
        "SELECT key FROM idempotency_keys WHERE key IN (:a, :b)", a=old_key, b=new_key
    ) == [(new_key,)]
    assert (
        stack.sql("SELECT token_hash FROM image_links WHERE job_id = :job", job=fresh["id"]) == []
    )
    assert stack.sql("SELECT count(*) FROM image_links WHERE job_id = :job", job=linked_job) == [
        (1,)
    ]
    assert stack.sql("SELECT count(*) FROM admin_sessions") == [(sessions_before - 1,)]
    assert stack.sql("SELECT count(*) FROM admin_login_failures") == [(0,)]
    assert stack.sql(
        "SELECT response_excerpt FROM webhook_attempts WHERE id = :id", id=attempt_with_excerpt
    ) != [(None,)]
    assert stack.sql(
        "SELECT a.response_excerpt, a.status_code FROM webhook_attempts a "
        "JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.job_id = :job",
        job=hooked_job,
    ) == [(None, 200)]

    # The dashboard says what happened instead of showing broken images; the list still works.
    with httpx.Client(base_url=stack.api_url, headers={"Origin": stack.api_url}) as board:
        assert board.post("/admin/login", data={"key": admin}).status_code == 303
        edit_page = board.get(f"/admin/jobs/{due[2]}")
        assert edit_page.status_code == 200
        assert "data-images-expired" in edit_page.text
        assert "Deleted by retention" in edit_page.text
        assert f"/admin/jobs/{due[2]}/images/" not in edit_page.text
        assert board.get(f"/admin/jobs/{due[2]}/images/output/0").status_code == 410
        assert board.get(f"/admin/jobs/{due[2]}/images/input/0").status_code == 410
        recent_page = board.get(f"/admin/jobs/{recent['id']}")
        assert f"/admin/jobs/{recent['id']}/images/input/0" in recent_page.text
        listing = board.get(
            "/admin/jobs",
            params={
                "key": stack.sql("SELECT api_key_id FROM jobs WHERE id = :id", id=due[0])[0][0]
            },
        )
        assert listing.status_code == 200
        assert listing.text.count("data-image-expired") == 4
        assert 'class="thumb"' in listing.text
    # The listing made no thumbnail again from what was deleted.
    assert stack.sql("SELECT count(*) FROM job_thumbnails WHERE job_id IN :ids", ids=due) == [(0,)]


# ---- the counters, against the same purge run in this process ------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database built by the migrations."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'retention.db'}"
        upgrade_to_head(url)
        yield url
    else:
        with postgres_database() as plain:
            url = normalize_database_url(plain)
            upgrade_to_head(url)
            yield url


def counted(metric: str, role: str) -> float:
    return (
        REGISTRY.get_sample_value(f"fluxgate_retention_deleted_{metric}_total", {"role": role})
        or 0.0
    )


def add_job(
    session: Session, *, key: str, completed: datetime | None, inputs: list[int], output: int | None
) -> str:
    """A job completed at ``completed`` (None: still queued) with inputs and an output of those
    sizes in bytes."""
    price_id = session.scalars(select(Price.id).where(Price.model == "flux-2-klein-4b")).first()
    job = Job(
        id=new_id("job"),
        api_key_id=key,
        status=JobStatus.QUEUED if completed is None else JobStatus.SUCCEEDED,
        model="flux-2-klein-4b",
        prompt="kept or not",
        width=256,
        height=256,
        steps=4,
        price_id=price_id,
        estimated_nanos=1,
        input_tiles=0,
        output_tiles=1,
        input_image_count=len(inputs),
        created_at=(completed or datetime.now(UTC)) - timedelta(minutes=5),
        completed_at=completed,
    )
    session.add(job)
    session.flush()
    roles = [("input", position, size) for position, size in enumerate(inputs)]
    if output is not None:
        roles.append(("output", 0, output))
    for role, position, size in roles:
        session.add(
            JobImage(
                job_id=job.id,
                role=role,
                position=position,
                content_type="image/png",
                width=1,
                height=1,
                size_bytes=size,
                sha256="0" * 64,
                data=b"x" * size,
            )
        )
    if output is not None:
        session.add(JobThumbnail(job_id=job.id, data=b"thumb"))
    return job.id


def test_the_counters_count_what_each_committed_batch_deleted(database: str) -> None:
    engine = make_engine(database)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    now = datetime.now(UTC)
    try:
        with sessions.begin() as session:
            key = key_row("counted")
            session.add(key)
            session.flush()
            old = now - 3 * DAY
            due = [
                add_job(session, key=key.id, completed=old, inputs=[], output=1000),
                add_job(session, key=key.id, completed=old, inputs=[300, 200], output=2000),
                add_job(session, key=key.id, completed=old, inputs=[], output=3000),
                add_job(session, key=key.id, completed=old, inputs=[50], output=None),
                add_job(session, key=key.id, completed=now - 2 * DAY, inputs=[], output=4000),
            ]
            within = add_job(session, key=key.id, completed=now - DAY / 2, inputs=[7], output=5000)
            queued = add_job(session, key=key.id, completed=None, inputs=[9], output=None)
            queued_job = session.get_one(Job, queued)
            queued_job.created_at = old  # old, but not completed: its inputs are still needed
        settings = load_settings(
            database_url=database,
            broker_url="filesystem:///nonexistent",
            image_retention_days=1,
            retention_batch_size=BATCH,
        )
        before = {(m, r): counted(m, r) for m in ("images", "bytes") for r in ("input", "output")}
        purged = purge(settings, now=now, sessions=sessions)
        after = {(m, r): counted(m, r) for m in ("images", "bytes") for r in ("input", "output")}
        assert (purged.jobs, purged.batches) == (5, 3)
        assert {k: after[k] - before[k] for k in after} == {
            ("images", "input"): 3,
            ("bytes", "input"): 550,
            ("images", "output"): 4,
            ("bytes", "output"): 10_000,
        }
        with sessions() as session:
            emptied = session.scalars(
                select(JobImage.job_id).where(JobImage.data.is_(None)).distinct()
            ).all()
            assert sorted(emptied) == sorted(due)
            assert session.scalar(select(func.count()).select_from(JobImage)) == 10
            assert session.scalars(select(JobThumbnail.job_id)).all() == [within]
        # A page made a thumbnail from an output while its batch was deleting it: the next run
        # deletes that thumbnail. Nothing more is due: it deletes and counts no image.
        with sessions.begin() as session:
            session.add(JobThumbnail(job_id=due[0], data=b"made during the batch"))
        again = purge(settings, now=now, sessions=sessions)
        assert again.rows["thumbnails left behind"] == 1
        with sessions() as session:
            assert session.scalars(select(JobThumbnail.job_id)).all() == [within]
        assert (again.jobs, again.batches) == (0, 1)
        assert {
            (m, r): counted(m, r) for m in ("images", "bytes") for r in ("input", "output")
        } == after
        # 0 keeps images forever.
        forever = purge(
            settings.model_copy(update={"image_retention_days": 0}),
            now=now + 30 * DAY,
            sessions=sessions,
        )
        assert (forever.jobs, forever.batches) == (0, 0)
    finally:
        engine.dispose()

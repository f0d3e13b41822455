"""Jobs queued or running at once per key: exact where a key has a limit, free where it has none.

A worker-less gateway keeps every accepted job queued, so what the limit admits is what the
test sees; the one test that needs jobs to finish starts (and stops) its own worker.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.core.db import make_engine
from app.core.settings import normalize_database_url
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, assert_error, wait_for_job


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def queued_stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_gateway(
        log_dir, backend=request.param, latency=0.05, worker=False, beat=False
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def admin(queued_stack: Stack) -> Iterator[httpx.Client]:
    with queued_stack.client(queued_stack.create_key("slots admin", "--admin")) as client:
        yield client


def body() -> dict[str, object]:
    return {"prompt": f"slot {uuid.uuid4().hex[:8]}", "width": 256, "height": 256}


def test_concurrent_submissions_never_exceed_the_limit(
    queued_stack: Stack, admin: httpx.Client
) -> None:
    created = admin.post("/v1/admin/keys", json={"name": "three", "max_concurrent_jobs": 3}).json()
    with queued_stack.client(created["key"]) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/jobs", json=body()), range(16)))
        assert Counter(answer.status_code for answer in answers) == {202: 3, 429: 13}
        for refused in (answer for answer in answers if answer.status_code == 429):
            assert_error(refused, 429, "rate_limited", None)
            assert "3 jobs queued or running at once" in refused.json()["error"]["message"]
        assert admin.get(f"/v1/admin/keys/{created['id']}").json()["active_jobs"] == 3

        # A job that ends gives its slot back by ending: one more fits, and no second.
        accepted = [answer.json() for answer in answers if answer.status_code == 202]
        assert client.post(f"/v1/jobs/{accepted[0]['id']}/cancel").status_code == 200
        assert client.post("/v1/jobs", json=body()).status_code == 202
        assert_error(client.post("/v1/jobs", json=body()), 429, "rate_limited", None)
        assert admin.get(f"/v1/admin/keys/{created['id']}").json()["active_jobs"] == 3


def test_a_new_limit_counts_the_jobs_already_queued(
    queued_stack: Stack, admin: httpx.Client
) -> None:
    created = admin.post("/v1/admin/keys", json={"name": "limited later"}).json()
    with queued_stack.client(created["key"]) as client:
        for _ in range(3):
            assert client.post("/v1/jobs", json=body()).status_code == 202
        patched = admin.patch(f"/v1/admin/keys/{created['id']}", json={"max_concurrent_jobs": 3})
        assert patched.json()["active_jobs"] == 3
        assert_error(client.post("/v1/jobs", json=body()), 429, "rate_limited", None)
        admin.patch(f"/v1/admin/keys/{created['id']}", json={"max_concurrent_jobs": 4})
        assert client.post("/v1/jobs", json=body()).status_code == 202


def test_a_key_without_a_limit_never_waits_on_its_row(queued_stack: Stack) -> None:
    """Another transaction holds the key's row (as a limited submission or an admin edit
    would); a key without a limit submits, runs and finishes its job regardless."""
    if queued_stack.backend != "postgres":
        pytest.skip("row locks are PostgreSQL's; SQLite locks the whole database for a write")
    key = queued_stack.create_key("unlimited")
    [(key_id,)] = queued_stack.sql("SELECT id FROM api_keys WHERE name = 'unlimited'")
    engine = make_engine(normalize_database_url(queued_stack.database_url))
    worker = queued_stack.start_worker()
    try:
        with engine.connect() as holder, holder.begin():
            holder.execute(
                sa.text("SELECT id FROM api_keys WHERE id = :id FOR NO KEY UPDATE"), {"id": key_id}
            )
            # A wait on that row would outlast this client's timeout.
            with queued_stack.client(key, timeout=10) as client:
                accepted = client.post("/v1/jobs", json=body())
                assert accepted.status_code == 202, accepted.text
                done = wait_for_job(client, accepted.json()["id"], statuses=FINAL, timeout=20)
                assert done["status"] == "succeeded", done
    finally:
        worker.stop()
        engine.dispose()

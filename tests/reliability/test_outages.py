"""Outages of what the gateway stands on, through a proxy the test takes down (the server
itself keeps running for everyone else): PostgreSQL gone for seconds while results are in
flight and dispatch slots are claiming; Redis gone while calls are in flight and jobs are
submitted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.faultproxy import FaultProxy, Proxies
from tests.harness.processes import wait_until
from tests.harness.stack import Stack
from tests.helpers import FINAL, submit, wait_for_job

OUTAGE_SECONDS = 6.0


@pytest.fixture(scope="module")
def proxied(log_dir: Path) -> Iterator[tuple[Stack, FaultProxy, FaultProxy]]:
    """A PostgreSQL + Redis gateway whose processes reach both through fault proxies.
    The upstream limiter lets one call start a second, so dispatch slots keep claiming
    through an outage; leases are long enough to outlast it, REQUEUE_AFTER far longer."""
    stack = Stack(
        log_dir,
        backend="postgres",
        latency=2.0,
        upstream_rpm="60",
        job_lease_seconds="40",
        upstream_timeout_seconds="10",
        requeue_after_seconds="300",
    )
    proxies = Proxies(stack)
    try:
        stack.start_api()
        stack.start_worker(8)
        stack.start_beat()
        yield stack, proxies.postgres, proxies.redis
    finally:
        stack.close()
        proxies.close()


def charges(stack: Stack, job_id: str) -> int:
    return int(stack.sql("SELECT count(*) FROM charges WHERE job_id = :id", id=job_id)[0][0])


def test_a_database_outage_loses_no_result_and_calls_upstream_once(
    proxied: tuple[Stack, FaultProxy, FaultProxy],
) -> None:
    """The probe's 10 s PostgreSQL restart: a worker gave up its write after ~3 s, so 24 of
    584 jobs were called upstream (and charged by Cloudflare) twice; claims that failed in the
    outage waited out REQUEUE_AFTER."""
    stack, postgres, _ = proxied
    key = stack.create_key("outage")
    prompts = [f"outage {n} {uuid.uuid4().hex[:6]}" for n in range(6)]
    with stack.client(key) as client:
        jobs = [submit(client, prompt) for prompt in prompts]
        # One call starts at once and is in flight through the outage; the limiter lets
        # the others claim one a second, all while the database is down.
        wait_until(lambda: stack.simulator.stats()["in_flight"] >= 1, timeout=10, what="a call")
        with postgres.outage():
            answer = client.post("/v1/jobs", json={"prompt": "during", "width": 512})
            assert answer.status_code == 503, answer.text
            time.sleep(OUTAGE_SECONDS)
        back = time.monotonic()
        finished = [wait_for_job(client, job, statuses=FINAL, timeout=60) for job in jobs]
    assert time.monotonic() - back < 60
    assert [job["status"] for job in finished] == ["succeeded"] * len(jobs)
    for job, prompt in zip(jobs, prompts, strict=True):
        assert stack.simulator.count(prompt) == 1, prompt
        assert charges(stack, job) == 1


def test_a_redis_outage_refuses_cleanly_and_loses_no_accepted_job(
    proxied: tuple[Stack, FaultProxy, FaultProxy],
) -> None:
    """Redis gone with messages unacknowledged (calls in flight): the worker must reconnect,
    not stop (Celery's second close of the broken connection killed it: "Unrecoverable
    error"); what was accepted meanwhile is sent once Redis is back."""
    stack, _, redis = proxied
    worker = stack.process("worker")
    plain = stack.create_key("redis outage")
    limited = stack.create_key("redis outage, limited", "--rate-limit", "1000")
    with stack.client(plain) as client, stack.client(limited) as limited_client:
        jobs = [submit(client, f"in flight {n} {uuid.uuid4().hex[:6]}") for n in range(4)]
        wait_until(lambda: stack.simulator.stats()["in_flight"] >= 1, timeout=10, what="a call")
        with redis.outage():
            jobs += [submit(client, f"no redis {n} {uuid.uuid4().hex[:6]}") for n in range(3)]
            # The per-minute count lives in Redis: without it, a clear 503.
            answer = limited_client.post("/v1/jobs", json={"prompt": "counted"})
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "redis_unavailable"
            assert client.get("/readyz").status_code == 503
            time.sleep(2)
        jobs += [submit(client, f"after {n} {uuid.uuid4().hex[:6]}") for n in range(2)]
        finished = [wait_for_job(client, job, statuses=FINAL, timeout=90) for job in jobs]
    assert worker.popen.poll() is None, worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    assert [job["status"] for job in finished] == ["succeeded"] * len(jobs)
    for job in jobs:
        assert charges(stack, job) == 1

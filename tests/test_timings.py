"""Where a job's time went: the Job's ``timings``, and ``Server-Timing`` on answers that waited
for a job."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.jobs.models import Job, JobAttempt
from app.jobs.timings import attempt_timings, job_timings
from tests.harness.stack import Stack, running_gateway

LATENCY = 0.3  # the simulator's seconds per call


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def gateway(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_gateway(log_dir, backend=request.param, latency=LATENCY, worker=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(gateway: Stack) -> Iterator[httpx.Client]:
    with gateway.client(gateway.create_key("timings"), timeout=60) as client:
        yield client


def server_timing(header: str) -> dict[str, int]:
    return {
        match[0]: int(match[1])
        for match in re.findall(r"(\w+);dur=(\d+)(?:;desc=\"[^\"]*\")?", header)
    }


def total_ms(job: dict[str, Any]) -> float:
    created = datetime.fromisoformat(job["created_at"])
    completed = datetime.fromisoformat(job["completed_at"])
    return (completed - created).total_seconds() * 1000


def test_a_waited_for_job_says_where_its_time_went(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"prompt": "timed"}, headers={"Prefer": "wait=30"})
    assert answer.status_code == 200
    job = answer.json()
    timings = job["timings"]
    assert set(timings) == {"queue_ms", "upstream_ms", "overhead_ms"}
    assert timings["upstream_ms"] >= LATENCY * 1000
    assert timings["queue_ms"] >= 0
    assert timings["overhead_ms"] >= 0
    # The three parts are the whole, to rounding.
    assert abs(sum(timings.values()) - total_ms(job)) <= 2
    assert server_timing(answer.headers["Server-Timing"]) == {
        "queue": timings["queue_ms"],
        "upstream": timings["upstream_ms"],
        "overhead": timings["overhead_ms"],
    }
    # The same figures when the job is read later.
    assert client.get(f"/v1/jobs/{job['id']}").json()["timings"] == timings


def test_a_job_not_waited_for_has_no_server_timing(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"prompt": "not waited for"})
    assert answer.status_code == 202
    assert "Server-Timing" not in answer.headers
    assert answer.json()["timings"] == {"queue_ms": None, "upstream_ms": None, "overhead_ms": None}


def test_a_retried_job_counts_its_backoff_as_queue_time(
    gateway: Stack, client: httpx.Client
) -> None:
    gateway.simulator.script("timed retry", ["3040", "ok"])
    answer = client.post("/v1/jobs", json={"prompt": "timed retry"}, headers={"Prefer": "wait=30"})
    job = answer.json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    timings = job["timings"]
    # Two calls of LATENCY each; the backoff between them (at least half RETRY_BASE_SECONDS,
    # 0.2 s in the tests, with jitter) is time spent queued.
    assert timings["upstream_ms"] >= 2 * LATENCY * 1000
    rows = gateway.sql(
        "SELECT upstream_ms FROM job_attempts WHERE job_id = :id ORDER BY number", id=job["id"]
    )
    assert timings["upstream_ms"] == sum(row[0] for row in rows)
    assert timings["queue_ms"] >= 100
    assert abs(sum(timings.values()) - total_ms(job)) <= 3
    assert server_timing(answer.headers["Server-Timing"])["upstream"] == timings["upstream_ms"]


def test_the_openai_endpoint_sends_server_timing(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/images/generations", json={"prompt": "timed openai", "n": 2, "size": "512x512"}
    )
    assert answer.status_code == 200, answer.text
    parts = server_timing(answer.headers["Server-Timing"])
    assert set(parts) == {"queue", "upstream", "overhead"}
    assert parts["upstream"] >= LATENCY * 1000


def test_a_lost_attempt_counts_as_the_gateways_time() -> None:
    """Attempt 1's worker died (its start was never recorded); attempt 2 succeeded."""
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def at(ms: int) -> datetime:
        return t0 + timedelta(milliseconds=ms)

    job = Job(
        created_at=t0, started_at=at(50), completed_at=at(9_000), attempts=2, status="succeeded"
    )
    attempts = [
        JobAttempt(number=1, started_at=None, ended_at=at(6_050), upstream_ms=None),
        JobAttempt(number=2, started_at=at(6_150), ended_at=at(7_200), upstream_ms=1_000),
    ]
    parts = attempt_timings(job, attempts)
    assert [(p.queue_ms, p.upstream_ms, p.overhead_ms) for p in parts] == [
        (None, None, 6_050),
        (100, 1_000, 50),
    ]
    timings = job_timings(job, attempts)
    assert (timings.queue_ms, timings.upstream_ms, timings.overhead_ms) == (100, 1_000, 7_900)

"""Nothing accepted is ever lost, nothing is charged twice: real worker processes killed,
broker messages lost, duplicate deliveries, cancel races. Its own gateway, so killing
workers here never disturbs the other tests."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness.processes import Process, wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, assert_error, wait_for_job

LATENCY = 2.0  # seconds per upstream call: long enough to act while a job is in flight


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def slow_stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    # No worker: each test starts (and kills) its own. Calls time out well after LATENCY: the
    # 80-job flood ran calls past the tests' 3 s while the other test process was busy, and
    # their retries failed what these tests count on succeeding once.
    with running_gateway(
        log_dir,
        backend=request.param,
        latency=LATENCY,
        worker=False,
        upstream_timeout_seconds="6",
        job_lease_seconds="9",
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def key(slow_stack: Stack) -> str:
    return slow_stack.create_key("resilience")


@pytest.fixture
def client(slow_stack: Stack, key: str) -> Iterator[httpx.Client]:
    with slow_stack.client(key) as http:
        yield http


@pytest.fixture
def workers(slow_stack: Stack) -> Iterator[list[Process]]:
    """Workers a test starts; stopped at its end so the next test starts with none."""
    started: list[Process] = []
    yield started
    for worker in started:
        worker.stop()


def submit(client: httpx.Client, prompt: str) -> dict:
    response = client.post("/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512})
    assert response.status_code == 202, response.text
    return response.json()


def ledger(stack: Stack, job_id: str) -> list[tuple]:
    return stack.sql("SELECT amount_nanos FROM charges WHERE job_id = :job_id", job_id=job_id)


def test_worker_killed_mid_job_still_completes_charged_once(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    prompt = f"killed mid-call {uuid.uuid4().hex[:8]}"
    first = slow_stack.start_worker()
    workers.append(first)
    job = submit(client, prompt)
    wait_for_job(client, job["id"], statuses={"running"}, timeout=15)
    wait_until(
        lambda: slow_stack.simulator.stats()["in_flight"] >= 1, timeout=5, what="call in flight"
    )
    first.signal(signal.SIGKILL)
    first.popen.wait(5)

    workers.append(slow_stack.start_worker())
    # Once the sweep (run by a worker) has seen the lease run out, the job says why it is on
    # its second attempt, until that attempt ends.
    seen: dict = {}

    def retried() -> bool:
        nonlocal seen
        seen = client.get(f"/v1/jobs/{job['id']}").json()
        return seen["last_error"] is not None or seen["status"] in FINAL

    wait_until(retried, timeout=30, interval=0.1, what="the sweep to give the job back")
    assert seen["status"] in ("queued", "running"), seen
    assert seen["last_error"] == {
        "code": "worker_lost",
        "message": "the worker running the job's attempt stopped before it ended",
        "upstream_code": None,
    }
    assert seen["error"] is None
    assert seen["next_attempt_at"] is None  # due at once: the next free worker takes it
    done = wait_for_job(client, job["id"], statuses=FINAL, timeout=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["cost"]["charged"] == "0.000287"
    assert ledger(slow_stack, job["id"]) == [(287_000,)]
    assert slow_stack.sql(
        "SELECT count(*) FROM job_images WHERE job_id = :job_id", job_id=job["id"]
    ) == [(1,)]
    # The killed attempt is on record as lost (seen by the sweeper), then the one that won.
    assert slow_stack.sql(
        "SELECT number, outcome, error_code FROM job_attempts WHERE job_id = :job_id"
        " ORDER BY number",
        job_id=job["id"],
    ) == [(1, "lost", "worker_lost"), (2, "succeeded", None)]
    # The killed call did reach the upstream; the sweeper then re-sent the job once.
    wait_until(
        lambda: slow_stack.simulator.count(prompt) == 2, timeout=10, what="both upstream calls"
    )


def test_lost_broker_message_still_completes(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    prompt = f"message lost {uuid.uuid4().hex[:8]}"
    job = submit(client, prompt)  # no worker is running: the message waits in Redis
    slow_stack.flush_broker()  # ...and is gone
    workers.append(slow_stack.start_worker())
    done = wait_for_job(client, job["id"], statuses=FINAL, timeout=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert ledger(slow_stack, job["id"]) == [(287_000,)]


def test_canceled_job_is_never_sent_upstream(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    prompt = f"cancel me {uuid.uuid4().hex[:8]}"
    job = submit(client, prompt)
    assert job["status"] == "queued"
    assert job["queue_position"] >= 1
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["status"] == "canceled"
    assert body["cost"]["charged"] == "0"
    assert body["completed_at"] is not None
    assert body["queue_position"] is None
    assert_error(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancelable", None)

    # A worker now receives the message (and the sweeper's) and must leave the job alone.
    workers.append(slow_stack.start_worker())
    marker = submit(client, f"after cancel {uuid.uuid4().hex[:8]}")
    wait_for_job(client, marker["id"], statuses=FINAL, timeout=30)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    assert slow_stack.simulator.count(prompt) == 0
    assert ledger(slow_stack, job["id"]) == []


def test_running_job_cannot_be_canceled(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    workers.append(slow_stack.start_worker())
    job = submit(client, f"running {uuid.uuid4().hex[:8]}")
    wait_for_job(client, job["id"], statuses={"running"}, timeout=15)
    error = assert_error(
        client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancelable", None
    )
    assert "running" in error["message"]
    assert wait_for_job(client, job["id"], statuses=FINAL)["status"] == "succeeded"


def test_duplicate_deliveries_run_the_job_once(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    prompt = f"delivered six times {uuid.uuid4().hex[:8]}"
    job = submit(client, prompt)
    slow_stack.send_duplicates(job["id"], 5)
    workers.append(slow_stack.start_worker(concurrency=16))
    done = wait_for_job(client, job["id"], statuses=FINAL, timeout=30)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert ledger(slow_stack, job["id"]) == [(287_000,)]
    assert slow_stack.simulator.count(prompt) == 1


def test_one_worker_keeps_64_calls_in_flight(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    httpx.post(f"{slow_stack.simulator.url}/__sim/reset").raise_for_status()
    workers.append(slow_stack.start_worker(concurrency=None))
    with ThreadPoolExecutor(16) as pool:
        jobs = list(
            pool.map(lambda i: submit(client, f"flood {i} {uuid.uuid4().hex[:6]}"), range(80))
        )
    for job in jobs:
        assert wait_for_job(client, job["id"], statuses=FINAL, timeout=60)["status"] == "succeeded"
    assert slow_stack.simulator.stats()["max_in_flight"] >= 64


def test_sigterm_worker_finishes_in_flight_and_returns_the_rest(
    slow_stack: Stack, client: httpx.Client, workers: list[Process]
) -> None:
    first = slow_stack.start_worker(concurrency=2)
    jobs = [submit(client, f"graceful {i} {uuid.uuid4().hex[:6]}") for i in range(8)]
    wait_until(
        lambda: slow_stack.simulator.stats()["in_flight"] >= 2,
        timeout=15,
        what="two calls in flight",
    )
    first.signal(signal.SIGTERM)
    assert first.popen.wait(30) == 0
    statuses = [client.get(f"/v1/jobs/{job['id']}").json()["status"] for job in jobs]
    # The two in flight were finished before the worker exited; nothing is left running.
    assert statuses.count("succeeded") >= 2
    assert "running" not in statuses

    workers.append(slow_stack.start_worker(concurrency=8))
    for job in jobs:
        done = wait_for_job(client, job["id"], statuses=FINAL, timeout=60)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
        assert ledger(slow_stack, job["id"]) == [(287_000,)]


def test_sigterm_api_drains_open_requests(slow_stack: Stack, key: str) -> None:
    api, api_url = slow_stack.start_extra_api()  # its own, so the module's API stays up
    prompt = f"drained {uuid.uuid4().hex[:6]}"
    body = f'{{"prompt": "{prompt}", "width": 512, "height": 512}}'.encode()
    signalled = False

    def slow_body() -> Iterator[bytes]:
        nonlocal signalled
        yield body[:10]
        api.signal(signal.SIGTERM)  # shutdown starts while this request is open
        signalled = True
        time.sleep(1.0)
        yield body[10:]

    with httpx.Client(base_url=api_url, timeout=30) as http:
        response = http.post(
            "/v1/jobs",
            content=slow_body(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
    assert signalled
    assert response.status_code == 202, response.text
    # uvicorn re-raises the signal once it has drained, so it ends "killed by SIGTERM".
    assert api.popen.wait(30) in (0, -signal.SIGTERM)
    job_id = response.json()["id"]
    assert slow_stack.sql("SELECT status FROM jobs WHERE id = :id", id=job_id) == [("queued",)]


def test_queue_positions_count_every_keys_jobs(slow_stack: Stack, client: httpx.Client) -> None:
    # No worker runs here, so everything submitted stays queued.
    with slow_stack.client(slow_stack.create_key("neighbour")) as other:
        first = submit(client, "position a1")
        theirs = submit(other, "position b1")
        second = submit(client, "position a2")
        base = first["queue_position"]
        assert theirs["queue_position"] == base + 1
        assert second["queue_position"] == base + 2
        listed = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        positions = {job["id"]: job["queue_position"] for job in listed}
        assert positions[first["id"]] == base
        assert positions[second["id"]] == base + 2
        # Canceling the head moves everyone behind it up by one.
        assert client.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
        assert other.get(f"/v1/jobs/{theirs['id']}").json()["queue_position"] == base
        assert client.get(f"/v1/jobs/{second['id']}").json()["queue_position"] == base + 1
        for job, owner in ((theirs, other), (second, client)):
            assert owner.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def test_queue_positions_shown_together_are_distinct_and_ordered(
    slow_stack: Stack, client: httpx.Client
) -> None:
    # No worker runs here, so everything submitted stays queued.
    jobs = [submit(client, f"in turn {n}") for n in range(5)]
    assert client.post(f"/v1/jobs/{jobs[1]['id']}/cancel").status_code == 200
    listed = client.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]
    positions = [job["queue_position"] for job in listed]
    # Newest first: each position below the one listed before it.
    assert all(a > b for a, b in itertools.pairwise(positions)), positions
    mine = {job["id"]: job["queue_position"] for job in listed}
    # Canceling the second moved the ones behind it up by one.
    assert [mine[job["id"]] for job in jobs if job is not jobs[1]] == [
        jobs[0]["queue_position"] + n for n in range(4)
    ]
    # Submits in flight at once: each counts the others' jobs that are ahead of its own.
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda n: submit(client, f"together {n}"), range(6)))
    told = [job["queue_position"] for job in together]
    assert len(set(told)) == len(told), told
    assert min(told) > max(positions)
    for job in [jobs[0], *jobs[2:], *together]:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def test_canceled_job_gives_its_hold_back(slow_stack: Stack) -> None:
    # No worker runs here, so jobs stay queued until canceled.
    key = slow_stack.create_key("one queued job", "--budget-usd", "0.000287")
    body = {"prompt": "held", "width": 512, "height": 512}
    with slow_stack.client(key) as client:
        first = client.post("/v1/jobs", json=body)
        assert first.status_code == 202
        assert_error(client.post("/v1/jobs", json=body), 402, "budget_exceeded", None)
        assert client.post(f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
        second = client.post("/v1/jobs", json=body)
        assert second.status_code == 202
        assert client.post(f"/v1/jobs/{second.json()['id']}/cancel").status_code == 200


def test_concurrency_limit_is_exact(slow_stack: Stack) -> None:
    # No worker runs here: submitted jobs stay queued, holding their slots.
    key = slow_stack.create_key("three at once", "--max-concurrent", "3")
    body = {"prompt": "slots", "width": 256, "height": 256}
    with slow_stack.client(key) as client, ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/jobs", json=body), range(10)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] * 3 + [429] * 7, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert_error(refused, 429, "rate_limited", None)
        assert refused.headers["retry-after"] == "1"
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        assert client.post(f"/v1/jobs/{accepted[0]}/cancel").status_code == 200
        again = client.post("/v1/jobs", json=body)
        assert again.status_code == 202
        for job_id in [*accepted[1:], again.json()["id"]]:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

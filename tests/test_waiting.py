"""Results pushed to waiting clients: ``Prefer: wait``, Server-Sent Events, and a canceled
job's webhook. Notifications wake waiters; the database load does not grow with their number.
Both backends; image jobs run only while a test starts a worker."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from app.core.errors import InvalidParameter
from app.core.settings import usable_cores
from app.jobs.watching import prefer_wait
from tests.harness.processes import FLUXGATE, Process, answers, free_port, wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import unique
from tests.receiver import Receiver

WAITERS = 200


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def quiet(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """API, beat and a webhook worker; no image worker until a test starts one."""
    with running_gateway(
        log_dir,
        backend=request.param,
        latency=0.5,
        worker=False,
        webhook_allowed_networks="127.0.0.0/8",
        events_keepalive_seconds="1",
        events_reconcile_seconds="1",
    ) as stack:
        stack.start_worker(2, queues="webhooks")
        yield stack


@pytest.fixture(scope="module")
def key(quiet: Stack) -> str:
    return quiet.create_key("waiting")


@pytest.fixture
def jobs_worker(quiet: Stack) -> Iterator[Process]:
    worker = quiet.start_worker(16, queues="jobs")
    yield worker
    worker.stop()


def events_of(stream: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) per Server-Sent Event; comment lines skipped."""
    name, data = "", ""
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield name, json.loads(data)
            name, data = "", ""


def test_prefer_wait_parsing() -> None:
    assert prefer_wait(None) is None
    assert prefer_wait("respond-async") is None
    assert prefer_wait("wait=5") == 5
    assert prefer_wait("respond-async, wait=10") == 10
    assert prefer_wait("wait=600") == 60  # capped
    assert prefer_wait('wait="7"; foo=bar') == 7  # a quoted value, parameters after ";"
    for bad in ("wait=soon", "wait=\u00b2", "wait=" + "9" * 5000, "wait=-1", "wait="):
        with pytest.raises(InvalidParameter, match="whole seconds"):
            prefer_wait(bad)


def test_prefer_wait_answers_202_at_the_deadline(quiet: Stack, key: str) -> None:
    with quiet.client(key) as http:
        started = time.monotonic()
        answer = http.post(
            "/v1/jobs", json={"prompt": unique("deadline")}, headers={"Prefer": "wait=2"}
        )
        elapsed = time.monotonic() - started
        assert answer.status_code == 202
        assert answer.json()["status"] == "queued"
        assert answer.headers["Preference-Applied"] == "wait=2"
        assert answer.headers["Location"] == f"/v1/jobs/{answer.json()['id']}"
        assert 2 <= elapsed < 6
        bad = http.post("/v1/jobs", json={"prompt": "x"}, headers={"Prefer": "wait=soon"})
        assert bad.status_code == 422
        assert bad.json()["error"]["param"] == "Prefer"


def test_waiting_clients_do_not_add_database_queries(quiet: Stack, key: str) -> None:
    """200 requests hold on ``Prefer: wait=60`` while no worker runs. Their waiting costs the
    database nothing per client (one shared re-check a second here); once a worker starts,
    each is answered 200 with its finished job, which its notification brought."""
    answers: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=WAITERS + 10)
    with (
        httpx.Client(
            base_url=quiet.api_url,
            headers={"Authorization": f"Bearer {key}", "Prefer": "wait=60"},
            timeout=120,
            limits=limits,
        ) as http,
        ThreadPoolExecutor(WAITERS) as pool,
    ):
        futures = [
            pool.submit(http.post, "/v1/jobs", json={"prompt": unique(f"waiter {i}")})
            for i in range(WAITERS)
        ]
        wait_until(
            lambda: quiet.metrics()["fluxgate_job_watchers"] == WAITERS,
            timeout=60,
            what="every client waiting",
        )
        before = quiet.metrics()["fluxgate_db_statements_total"]
        time.sleep(3)
        during = quiet.metrics()["fluxgate_db_statements_total"] - before
        # Polling even once a second per client would be 600 statements here.
        assert during <= 8, during

        before = quiet.metrics()["fluxgate_db_statements_total"]
        worker = quiet.start_worker(16, queues="jobs")
        try:
            answers = [future.result(timeout=90) for future in futures]
        finally:
            worker.stop()
        answering = quiet.metrics()["fluxgate_db_statements_total"] - before
        # Each job's answer came with its notification: no client read its job (that was two
        # statements a client); what is left is the shared re-check, once a second here.
        assert answering <= 40, answering
        # And the answer is the job as it is stored.
        for answer in answers[::20]:
            assert http.get(f"/v1/jobs/{answer.json()['id']}").json() == answer.json()
    assert [answer.status_code for answer in answers] == [200] * WAITERS
    assert {answer.json()["status"] for answer in answers} == {"succeeded"}
    assert all(answer.json()["output"]["image_url"] for answer in answers)
    wait_until(
        lambda: quiet.metrics()["fluxgate_job_watchers"] == 0, timeout=10, what="no watchers"
    )


def test_events_follow_a_job_from_queued_to_succeeded(quiet: Stack, key: str) -> None:
    with quiet.client(key) as http:
        job = http.post("/v1/jobs", json={"prompt": unique("streamed")}).json()
    seen: list[tuple[str, dict[str, Any]]] = []
    ended = threading.Event()

    def listen() -> None:
        with (
            quiet.client(key) as http,
            http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen.extend(events_of(stream))
        ended.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: len(seen) == 1, timeout=10, what="the first event")
    assert seen[0][0] == "job.queued"
    time.sleep(1.5)  # quiet: keep-alive comments only, no events
    assert len(seen) == 1
    worker = quiet.start_worker(16, queues="jobs")
    try:
        assert ended.wait(30), "the stream did not end at the final status"
    finally:
        worker.stop()
    assert [name for name, _ in seen] == ["job.queued", "job.running", "job.succeeded"]
    assert [data["status"] for _, data in seen] == ["queued", "running", "succeeded"]
    assert seen[-1][1]["id"] == job["id"]
    assert seen[-1][1]["output"]["image_url"] == f"/v1/jobs/{job['id']}/image"

    # A finished job: its one event, then the end.
    with quiet.client(key) as http, http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert [name for name, _ in events_of(stream)] == ["job.succeeded"]


def test_a_client_that_leaves_frees_its_watcher(quiet: Stack, key: str) -> None:
    with quiet.client(key) as http:
        job = http.post("/v1/jobs", json={"prompt": unique("left")}).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            events = events_of(stream)  # kept: dropping it would close the stream already
            assert next(events)[0] == "job.queued"
            assert quiet.metrics()["fluxgate_job_watchers"] == 1
        # Gone: the stream is cancelled at once, not at the next keep-alive or deadline.
        wait_until(
            lambda: quiet.metrics()["fluxgate_job_watchers"] == 0,
            timeout=3,
            what="the watcher to be freed",
        )
        http.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_waiting_request_whose_client_leaves_is_freed(quiet: Stack, key: str) -> None:
    with quiet.client(key) as http, pytest.raises(httpx.ReadTimeout):
        http.post(
            "/v1/jobs",
            json={"prompt": unique("impatient")},
            headers={"Prefer": "wait=60"},
            timeout=httpx.Timeout(30, read=2),
        )
    wait_until(
        lambda: quiet.metrics()["fluxgate_job_watchers"] == 0,
        timeout=5,
        what="the waiting request to notice",
    )


def test_prefer_wait_answers_200_when_the_job_finishes(
    quiet: Stack, key: str, jobs_worker: Process
) -> None:
    with quiet.client(key) as http:
        started = time.monotonic()
        answer = http.post(
            "/v1/jobs", json={"prompt": unique("quick")}, headers={"Prefer": "wait=30"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "succeeded"
        assert answer.json()["cost"]["charged"] == answer.json()["cost"]["estimated"]
        assert time.monotonic() - started < 15


def test_a_canceled_job_is_delivered_as_job_canceled(quiet: Stack) -> None:
    receiver = Receiver()
    try:
        key, _, secret = quiet.create_key_with_secret("canceling")
        path = f"/ok/canceled-{time.time_ns()}"
        with quiet.client(key) as http:
            job = http.post(
                "/v1/jobs", json={"prompt": "never run", "webhook_url": receiver.url(path)}
            ).json()
            assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        [received] = receiver.wait_for(path)
        event = Webhook(secret).verify(received.body, received.headers)
        assert event["type"] == "job.canceled"
        assert event["data"]["id"] == job["id"]
        assert event["data"]["cost"]["charged"] == "0"
    finally:
        receiver.close()


def test_the_api_runs_a_process_per_core_and_each_one_is_woken(
    quiet: Stack, key: str, jobs_worker: Process
) -> None:
    """Without --workers (nor FLUXGATE_API_WORKERS) `fluxgate api` starts one uvicorn process
    per core (up to 8); waiting requests on every one of them are answered when their jobs
    end, since each process listens for the notifications."""
    cores = min(usable_cores(), 8)
    env = {name: value for name, value in quiet.env.items() if name != "FLUXGATE_API_WORKERS"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = quiet.start("api", [*FLUXGATE, "api", "--port", str(port)], env)
    try:
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the API", watch=[api])
        children = subprocess.run(
            ["pgrep", "-P", str(api.popen.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        # uvicorn's supervisor, its processes, and (with a fork-server start method) a helper.
        serving = [pid for pid in children if "spawn_main" in _command_line(pid)]
        assert len(serving) == cores, children

        def wait_for_one(number: int) -> httpx.Response:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
                return http.post(
                    "/v1/jobs",
                    json={"prompt": unique(f"per core {number}")},
                    headers={"Prefer": "wait=30"},
                    timeout=40,
                )

        with ThreadPoolExecutor(4 * cores) as pool:
            answered = list(pool.map(wait_for_one, range(4 * cores)))
        assert [answer.status_code for answer in answered] == [200] * (4 * cores)
        assert {answer.json()["status"] for answer in answered} == {"succeeded"}
    finally:
        api.stop()


def _command_line(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""

"""Structured logs and request ids, on real processes with ``LOG_FORMAT=json``: every answer
carries ``X-Request-ID`` (the client's when usable, else a new one), the job keeps it, the API's
lines for the request and the worker's lines for the job carry it; every line of every role is
one JSON object; and a full run (success, failure, webhooks, a dashboard login) logs no key,
webhook secret or prompt. Both backends."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.core import logs
from app.http.request_ids import accepted_request_id
from tests.harness.processes import Process, wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import unique, wait_for_job
from tests.receiver import Receiver

GENERATED = re.compile(r"[0-9a-f]{32}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def lines(process: Process) -> list[dict[str, Any]]:
    """The process's log, each complete line parsed as JSON (any other line fails the test)."""
    *complete, _partial = process.log().split("\n")
    parsed = []
    for line in complete:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{process.name}: not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


@dataclass
class Gateway:
    stack: Stack
    receiver: Receiver
    key: str
    key_id: str
    secret: str
    admin: str

    def client(self, key: str | None = None) -> httpx.Client:
        return self.stack.client(key or self.key)

    def lines_with(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The lines of every process called ``name`` whose fields include ``fields``."""
        return [
            record
            for process in self.stack.processes
            if process.name == name
            for record in lines(process)
            if fields.items() <= record.items()
        ]


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def gateway(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    receiver = Receiver("127.0.0.1")
    try:
        with running_gateway(
            log_dir,
            backend=request.param,
            latency=0.05,
            worker=False,
            log_format="json",
            webhook_allowed_networks="127.0.0.1/32",
            webhook_retry_schedule="0,1",
            webhook_timeout_seconds="2",
        ) as stack:
            stack.start_worker(queues="jobs,maintenance")
            stack.start_worker(2, queues="webhooks", name="webhooks")
            key, key_id, secret = stack.create_key_with_secret("logged")
            admin = stack.create_key("logged admin", "--admin")
            yield Gateway(stack, receiver, key, key_id, secret, admin)
    finally:
        receiver.close()


def test_a_request_id_follows_its_job_from_the_answer_to_the_worker(gateway: Gateway) -> None:
    request_id = f"abc-123.{uuid.uuid4().hex[:8]}:x_y"
    with gateway.client() as http:
        answer = http.post(
            "/v1/jobs",
            json={"prompt": unique("traced"), "width": 512, "height": 512},
            headers={"X-Request-ID": request_id},
        )
        assert answer.status_code == 202, answer.text
        assert answer.headers["X-Request-ID"] == request_id
        job_id = answer.json()["id"]
        assert answer.json()["request_id"] == request_id
        done = wait_for_job(http, job_id, statuses={"succeeded"})
        # Later requests have ids of their own; the job keeps the one that submitted it.
        assert done["request_id"] == request_id
        later = http.get(f"/v1/jobs/{job_id}")
        assert GENERATED.fullmatch(later.headers["X-Request-ID"])
    [stored] = gateway.stack.sql("SELECT request_id FROM jobs WHERE id = :id", id=job_id)
    assert stored == (request_id,)

    [access] = gateway.lines_with("api", logger="uvicorn.access", request_id=request_id)
    assert access["method"] == "POST"
    assert access["path"] == "/v1/jobs"
    assert access["status"] == 202
    assert access["key_id"] == gateway.key_id

    def worker_logged() -> bool:
        return bool(gateway.lines_with("worker", request_id=request_id))

    wait_until(worker_logged, timeout=10, what="the worker's line for the job")
    [attempt] = gateway.lines_with("worker", request_id=request_id)
    assert attempt["logger"] == "fluxgate.worker"
    assert attempt["message"] == f"job {job_id} attempt 1 succeeded"
    assert attempt["job_id"] == job_id
    assert attempt["attempt"] == 1
    assert attempt["key_id"] == gateway.key_id
    assert attempt["level"] == "INFO"
    assert ISO_UTC.fullmatch(attempt["time"])


@pytest.mark.parametrize(
    "sent",
    [
        "has space",
        "x" * 129,
        "<script>alert(1)</script>",
        "semi;colon",
        "",
        "caf\u00e9",
    ],
)
def test_an_unusable_request_id_is_replaced(gateway: Gateway, sent: str) -> None:
    with gateway.client() as http:
        answer = http.get("/v1/models", headers={"X-Request-ID": sent.encode("latin-1")})
    assert answer.status_code == 200
    replaced = answer.headers["X-Request-ID"]
    assert GENERATED.fullmatch(replaced)
    assert gateway.lines_with("api", logger="uvicorn.access", request_id=replaced)


def test_the_longest_usable_request_id_is_kept(gateway: Gateway) -> None:
    longest = "A-z0.9_:" * 16  # 128 characters
    with gateway.client() as http:
        answer = http.get("/v1/models", headers={"X-Request-ID": longest})
    assert answer.headers["X-Request-ID"] == longest


def test_error_pages_and_streams_carry_the_request_id(gateway: Gateway) -> None:
    with gateway.client() as http:
        job_id = http.post("/v1/jobs", json={"prompt": unique("streamed")}).json()["id"]
        wait_for_job(http, job_id, statuses={"succeeded"})
    too_large = {
        "content": b"{" + b" " * (5 * 1024 * 1024) + b"}",  # FLUXGATE_MAX_REQUEST_BYTES: 4 MiB
        "headers": {"Content-Type": "application/json"},
    }
    requests: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/v1/jobs/job_nothere", {}, 404),
        ("GET", "/v1/models", {"headers": {"Authorization": "Bearer fgk_wrong"}}, 401),
        ("POST", "/v1/jobs", too_large, 413),
        ("GET", "/admin/login", {}, 200),  # a dashboard page
        ("GET", "/admin/keys", {}, 303),  # the dashboard without a session
        ("GET", "/admin/static/dashboard.css", {}, 200),
        ("GET", f"/v1/jobs/{job_id}/events", {}, 200),  # Server-Sent Events
        ("GET", "/healthz", {}, 200),
    ]
    with gateway.client() as http:
        for method, path, options, status in requests:
            request_id = f"req-{uuid.uuid4().hex}"
            headers = {"X-Request-ID": request_id, **options.pop("headers", {})}
            answer = http.request(method, path, headers=headers, **options)
            assert answer.status_code == status, (path, answer.text[:200])
            assert answer.headers["X-Request-ID"] == request_id, path
            [access] = gateway.lines_with("api", logger="uvicorn.access", request_id=request_id)
            assert (access["method"], access["path"], access["status"]) == (method, path, status)


def test_a_request_head_refused_by_the_protocol_gets_a_new_id(gateway: Gateway) -> None:
    """431 is answered before the head is parsed: the client's id cannot be read, so a new one
    answers, and the refusal is logged under it."""
    url = urlsplit(gateway.stack.api_url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Request-ID: mine\r\n"
            + b"X-Big: "
            + b"a" * 40_000
            + b"\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/1.1 431")
    [request_id] = [
        line.split(":", 1)[1].strip() for line in head if line.lower().startswith("x-request-id:")
    ]
    assert GENERATED.fullmatch(request_id)
    [refused] = gateway.lines_with("api", request_id=request_id)
    assert refused["message"].startswith("request head refused: 431")


def test_a_full_run_logs_json_lines_and_no_secret(gateway: Gateway) -> None:
    """A success and a failure, each with a webhook (one delivered, one refused by its
    receiver), a dashboard login with the admin key; then every role stops and its whole log is
    read: one JSON object a line, and neither key, the webhook secret nor a prompt in it.

    The CLI is left out: ``keys create`` prints the key it made, which is its answer, not a log.
    So is the upstream simulator: receiving the prompt is what the upstream is for."""
    stack, receiver = gateway.stack, gateway.receiver
    succeeding = f"a lighthouse painted by a secret admirer {uuid.uuid4().hex}"
    failing = f"an unlucky lighthouse {uuid.uuid4().hex}"
    stack.simulator.script(failing, ["3036"])  # a final upstream error
    delivered, refused = f"/ok/{uuid.uuid4().hex}", f"/status/500/{uuid.uuid4().hex}"
    with gateway.client() as http:
        ids = [
            http.post(
                "/v1/jobs", json={"prompt": prompt, "webhook_url": receiver.url(path)}
            ).json()["id"]
            for prompt, path in ((succeeding, delivered), (failing, refused))
        ]
        assert wait_for_job(http, ids[0], statuses={"succeeded", "failed"})["status"] == (
            "succeeded"
        )
        assert wait_for_job(http, ids[1], statuses={"succeeded", "failed"})["status"] == "failed"
    receiver.wait_for(delivered)
    receiver.wait_for(refused, count=2)  # both attempts of the schedule
    # A shared image link works without a key: its token is a credential too.
    with gateway.client() as http:
        made = http.post(
            "/v1/images/generations",
            json={"prompt": succeeding, "response_format": "url", "size": "512x512"},
            timeout=60,
        )
        assert made.status_code == 200, made.text
        link = made.json()["data"][0]["url"]
    assert httpx.get(link).status_code == 200
    token = link.split("?", 1)[0].rsplit("/", 1)[-1]
    with httpx.Client(base_url=stack.api_url, headers={"Origin": stack.api_url}) as browser:
        assert browser.post("/admin/login", data={"key": gateway.admin}).status_code == 303
        assert browser.get("/admin/jobs", params={"q": succeeding}).status_code == 200

    def deliveries_logged() -> bool:
        found = gateway.lines_with("webhooks", job_id=ids[1], logger="fluxgate.worker")
        return len(found) == 2

    wait_until(deliveries_logged, timeout=15, what="both delivery attempts to be logged")
    [first, second] = gateway.lines_with("webhooks", job_id=ids[1], logger="fluxgate.worker")
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["delivery_id"] == second["delivery_id"]
    assert first["key_id"] == gateway.key_id

    stack.stop_processes()  # so that the logs hold the shutdowns too
    roles = [process for process in stack.processes if process.name != "simulator"]
    assert {process.name for process in roles} == {"api", "worker", "webhooks", "beat"}
    loggers = set()
    for process in roles:
        text = process.log()
        for secret in (gateway.key, gateway.admin, gateway.secret, succeeding, failing, token):
            assert secret not in text, (process.name, secret)
        for record in lines(process):
            assert {"time", "level", "logger", "message"} <= record.keys(), record
            assert ISO_UTC.fullmatch(record["time"]), record
            assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
            loggers.add(record["logger"])
    # Our own lines, uvicorn's (access and error), Celery's worker and beat.
    assert {
        "fluxgate.worker",
        "uvicorn.access",
        "uvicorn.error",
        "celery.apps.worker",
        "celery.beat",
    } <= loggers


def test_text_lines_show_the_context_compactly() -> None:
    record = logging.LogRecord("fluxgate.worker", logging.INFO, __file__, 1, "job %s", ("j",), None)
    with logs.bound(request_id="abc-123", job_id="job_1", attempt=2):
        logs.WithContext().filter(record)
    line = logs.TextLines().format(record)
    assert line.endswith(" INFO fluxgate.worker: job j [request_id=abc-123 job_id=job_1 attempt=2]")


def test_json_lines_keep_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record = logging.LogRecord(
            "fluxgate.api", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    with logs.bound(key_id="key_1"):
        logs.WithContext().filter(record)
    line = logs.JsonLines().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed) == ["time", "level", "logger", "message", "key_id", "exception"]
    assert "ValueError: first\nsecond" in parsed["exception"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(b"abc-123", True), (b"a" * 128, True), (b"a" * 129, False), (b"", False), (b"a b", False)],
)
def test_which_request_ids_are_kept(sent: bytes, kept: bool) -> None:
    assert (accepted_request_id(sent) == sent.decode()) is kept

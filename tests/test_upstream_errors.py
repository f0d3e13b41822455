"""Every class of upstream failure through the real worker: retried, or final, and never charged."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.harness.processes import wait_until
from tests.harness.stack import Stack
from tests.helpers import FINAL, wait_for_job


def run_with_script(
    stack: Stack, client: httpx.Client, sequence: list[str], timeout: float = 40
) -> tuple[str, dict]:
    prompt = f"scripted {'-'.join(sequence)} {uuid.uuid4().hex[:8]}"
    stack.simulator.script(prompt, sequence)
    job = client.post("/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512}).json()
    return prompt, wait_for_job(client, job["id"], statuses=FINAL, timeout=timeout)


def attempt_records(stack: Stack, job_id: str) -> list[tuple[object, ...]]:
    return stack.sql(
        "SELECT number, outcome, http_status, error_code, started_at IS NOT NULL"
        " FROM job_attempts WHERE job_id = :job_id ORDER BY number",
        job_id=job_id,
    )


def charges(stack: Stack, job_id: str) -> list[tuple[int]]:
    return stack.sql("SELECT amount_nanos FROM charges WHERE job_id = :job_id", job_id=job_id)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "fault",
    [
        "3040",
        "3021",
        "3007",
        "3008",
        "500",
        "502",
        "503",
        "nonjson",
        "badbase64",
        "notimage",
        "wrongsize",
        "hang",
    ],
)
def test_transient_failures_are_retried(stack: Stack, client: httpx.Client, fault: str) -> None:
    prompt, job = run_with_script(stack, client, [fault, "ok"])
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["error"] is None
    assert job["cost"]["charged"] == "0.000287"
    assert charges(stack, job["id"]) == [(287_000,)]
    # Each attempt is on record, in the transaction that recorded its outcome.
    first, second = attempt_records(stack, job["id"])
    assert first[:2] == (1, "retrying")
    assert first[3] is not None  # why it is retried
    if fault in ("500", "502", "503"):
        assert first[2] == int(fault)
    assert second == (2, "succeeded", 200, None, True)
    # A hung request is counted when the simulator ends it, a moment after the client gave up.
    wait_until(lambda: stack.simulator.count(prompt) == 2, timeout=10, what="two upstream requests")


def test_final_upstream_error_fails_at_once_and_costs_nothing(
    stack: Stack, client: httpx.Client
) -> None:
    prompt, job = run_with_script(stack, client, ["3036"])
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["code"] == "upstream_quota_exhausted"
    assert job["error"]["upstream_code"] == 3036
    assert job["cost"]["charged"] == "0"
    assert job["output"] is None
    assert charges(stack, job["id"]) == []
    assert stack.simulator.count(prompt) == 1
    response = client.get(f"/v1/jobs/{job['id']}/image")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "image_not_ready"


def test_attempts_are_bounded(stack: Stack, client: httpx.Client) -> None:
    prompt, job = run_with_script(stack, client, ["3040"] * 6)
    assert job["status"] == "failed"
    assert job["attempts"] == 4  # FLUXGATE_UPSTREAM_MAX_ATTEMPTS in the test stack
    assert job["error"] == {
        "code": "upstream_capacity",
        "message": "Workers AI was out of capacity "
        '(error 3040: "Capacity temporarily exceeded, please try again.")',
        "upstream_code": 3040,
    }
    assert job["cost"]["charged"] == "0"
    assert charges(stack, job["id"]) == []
    assert stack.simulator.count(prompt) == 4
    assert [row[:4] for row in attempt_records(stack, job["id"])] == [
        (1, "retrying", 429, "upstream_capacity"),
        (2, "retrying", 429, "upstream_capacity"),
        (3, "retrying", 429, "upstream_capacity"),
        (4, "failed", 429, "upstream_capacity"),
    ]


def test_server_errors_exhausted_are_reported(stack: Stack, client: httpx.Client) -> None:
    _, job = run_with_script(stack, client, ["500"] * 4)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_unavailable"
    assert job["error"]["upstream_code"] is None
    assert job["cost"]["charged"] == "0"


def test_retry_after_is_honoured(stack: Stack, client: httpx.Client) -> None:
    prompt, job = run_with_script(stack, client, ["3040@2", "ok"])
    assert job["status"] == "succeeded"
    first, second = stack.simulator.requests_for(prompt)
    # The test stack's own backoff would be 0.1..0.2 s; the upstream asked for 2 s.
    assert second["received_at"] - first["received_at"] >= 2.0

"""What many test files check and do through the API: its error envelope, prompts of their own,
jobs submitted and waited for."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.harness.processes import proc_status_kb, wait_until

FINAL = {"succeeded", "failed", "canceled"}


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None
) -> dict[str, Any]:
    """The response is the error envelope with this status, code and param; its error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code, error
    assert error["param"] == param, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error  # type: ignore[no-any-return]


def unique(prompt: str) -> str:
    """A prompt no other test uses, so the simulator's per-prompt records are this test's."""
    return f"{prompt} [{uuid.uuid4().hex[:8]}]"


def submit(client: httpx.Client, prompt: str) -> str:
    """The id of a new 512 x 512 job for ``prompt``."""
    response = client.post("/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for_job(
    client: httpx.Client, job_id: str, *, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    """The job as the API shows it once its status is one of ``statuses``."""
    found: dict[str, Any] = {}

    def check() -> bool:
        nonlocal found
        found = client.get(f"/v1/jobs/{job_id}").json()
        return found.get("status") in statuses

    wait_until(check, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")
    return found


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes."""
    kilobytes = proc_status_kb(pid, "VmHWM")
    if kilobytes is None:
        raise AssertionError("no VmHWM")
    return kilobytes * 1024

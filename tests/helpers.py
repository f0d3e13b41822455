"""What many test files do through the API: prompts of their own, jobs waited for."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.harness.processes import wait_until

FINAL = {"succeeded", "failed", "canceled"}


def unique(prompt: str) -> str:
    """A prompt no other test uses, so the simulator's per-prompt records are this test's."""
    return f"{prompt} [{uuid.uuid4().hex[:8]}]"


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

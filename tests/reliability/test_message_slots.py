"""A broker message is a dispatch slot, not a particular job: whichever job a message starts,
every job still gets one, without the sweeper's help."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, submit, wait_for_job


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def sweeperless(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """No beat: what happens here happens without the sweeper's help."""
    with running_gateway(
        log_dir, backend=request.param, latency=0.05, worker=False, beat=False
    ) as gateway:
        yield gateway


def test_a_message_that_starts_another_job_leaves_no_job_without_one(
    sweeperless: Stack,
) -> None:
    """The probe: a message (a dispatch slot) sent for one job started a newer job that had
    none, and the first job then waited a full REQUEUE_AFTER."""
    stack = sweeperless
    flood, lone = stack.create_key("two jobs"), stack.create_key("one job")
    with stack.client(flood) as flood_client, stack.client(lone) as lone_client:
        first, second = (submit(flood_client, f"flood {n} {uuid.uuid4().hex[:6]}") for n in (1, 2))
        newer = submit(lone_client, f"never sent {uuid.uuid4().hex[:6]}")
        # The broker loses everything; the newer job's message was never sent (the broker was
        # down when it was submitted), the other two each have theirs on its way.
        stack.flush_broker()
        stack.execute("UPDATE jobs SET enqueued_at = NULL WHERE id = :id", id=newer)
        stack.send_duplicates(first, 1)
        stack.send_duplicates(second, 1)
        # The lone key's job is the fairest, so the first message starts it.
        worker = stack.start_worker()
        try:
            for client, job in (
                (flood_client, first),
                (flood_client, second),
                (lone_client, newer),
            ):
                assert (
                    wait_for_job(client, job, statuses=FINAL, timeout=20)["status"] == "succeeded"
                )
        finally:
            worker.stop()

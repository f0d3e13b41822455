"""What a job-change notification carries, in one process: the ended job's answer for the
requests waiting now, a format the previous version still reads, and nothing kept or logged
that it should not be."""

from __future__ import annotations

import asyncio
import json

from app.core import outbox
from app.core.notifications import JobWatchHub, encode_change
from app.core.notifications.hub import MAX_CARRIED_ANSWER_BYTES

ANSWER = json.dumps({"id": "job_1", "status": "succeeded", "prompt": "a secret prompt"}).encode()


async def _no_statuses(job_ids: list[str]) -> dict[str, str]:
    return {}


def test_a_watcher_gets_the_ended_jobs_answer_and_the_hub_keeps_only_its_status() -> None:
    async def run() -> None:
        hub = JobWatchHub(None, read_statuses=_no_statuses, reconcile_seconds=60)
        async with hub.watch(["job_1"]) as watcher:
            hub._received(encode_change("job_1", "succeeded", ANSWER))
            change = await watcher.next_change(1)
        assert change is not None
        assert (change.job_id, change.status) == ("job_1", "succeeded")
        assert change.job is not None
        assert json.loads(change.job) == json.loads(ANSWER)
        # For a wait that starts later: the status, not the answer (memory for every job
        # that ends, asked about or not).
        kept = hub.recent_change("job_1")
        assert kept is not None
        assert (kept.status, kept.job) == ("succeeded", None)

    asyncio.run(run())


def test_the_previous_versions_reader_still_reads_the_notification() -> None:
    message = json.loads(encode_change("job_1", "succeeded", ANSWER))
    assert (message["job_id"], message["status"]) == ("job_1", "succeeded")


def test_an_answer_too_large_for_one_datagram_is_left_out() -> None:
    large = json.dumps({"prompt": "x" * MAX_CARRIED_ANSWER_BYTES}).encode()
    assert json.loads(encode_change("job_1", "succeeded", large)) == {
        "job_id": "job_1",
        "status": "succeeded",
    }


def test_a_change_that_cannot_be_sent_logs_no_prompt() -> None:
    """A notification that cannot be sent is logged with the message's repr."""
    assert "secret" not in repr(outbox.JobChanged("job_1", "succeeded", ANSWER))

"""Waiting for jobs without polling: ``Prefer: wait``, the OpenAI-compatible endpoints and the
Server-Sent Events stream all wait on the process's :class:`JobWatchHub`, and read the
database only when a job they watch has changed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request

from app.core.db import session_scope
from app.core.errors import InvalidParameter
from app.core.notifications import JobWatchHub
from app.jobs import service
from app.jobs.models import FINAL_STATUSES, Job, JobStatus
from app.jobs.schemas import JobOut

JobReader = Callable[[str], Awaitable[JobOut]]
DisconnectCheck = Callable[[], Awaitable[bool]]

# How often a waiting request checks that its client is still there (no database involved).
DISCONNECT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Waited:
    finished: bool  # every job reached a final status in time
    # The ended jobs' answers that came with their notifications (a re-check brings none).
    answers: dict[str, bytes]


async def wait_until_final(
    hub: JobWatchHub,
    job_ids: Sequence[str],
    *,
    timeout: float,
    disconnected: DisconnectCheck,
    submitted: bool = False,
) -> Waited:
    """Wait until every job reached a final status, for at most ``timeout`` seconds. One
    status read when the wait starts (none for jobs the caller has just ``submitted``: they
    were queued when it committed, and what happened since was notified, either before the
    watch began, which the hub keeps, or after); after that, only notifications (and the
    hub's shared re-checks). Gives up early, unfinished, when the client goes away."""
    deadline = time.monotonic() + timeout
    answers: dict[str, bytes] = {}
    async with hub.watch(job_ids) as watcher:
        if submitted:
            for job_id in job_ids:
                earlier = hub.recent_change(job_id)
                watcher.seen[job_id] = JobStatus.QUEUED if earlier is None else earlier.status
        else:
            watcher.seen.update(await hub.read_statuses(list(job_ids)))
        pending = {job_id for job_id in job_ids if watcher.seen.get(job_id) not in FINAL_STATUSES}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or await disconnected():
                return Waited(False, answers)
            change = await watcher.next_change(min(remaining, DISCONNECT_CHECK_SECONDS))
            if change is None:
                continue
            watcher.seen[change.job_id] = change.status
            if change.status in FINAL_STATUSES:
                pending.discard(change.job_id)
                if change.job is not None:
                    answers[change.job_id] = change.job
    return Waited(True, answers)


def sse_event(job: JobOut, *, sequence: int) -> str:
    data = json.dumps(job.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {sequence}\nevent: job.{job.status}\ndata: {data}\n\n"


async def job_events(
    hub: JobWatchHub, job_id: str, *, read_job: JobReader, keepalive_seconds: float
) -> AsyncIterator[str]:
    """The job now, then the job after each status change, ending at a final status. A comment
    line every ``keepalive_seconds`` of quiet keeps proxies from closing the stream. Each
    event reads the job once; quiet streams cost the database nothing."""
    sequence = 0
    last: tuple[str, int] | None = None
    async with hub.watch([job_id]) as watcher:
        while True:
            job = await read_job(job_id)
            watcher.seen[job_id] = job.status
            if (job.status, job.attempts) != last:
                last = (job.status, job.attempts)
                sequence += 1
                yield sse_event(job, sequence=sequence)
            if job.status in FINAL_STATUSES:
                return
            while await watcher.next_change(keepalive_seconds) is None:
                yield ": keep-alive\n\n"


MAX_WAIT_SECONDS = 60


def prefer_wait(header: str | None) -> int | None:
    """The ``wait=N`` of a ``Prefer`` header (RFC 7240), capped at 60 s; ``None`` without one."""
    if header is None:
        return None
    for preference in header.split(","):
        token = preference.split(";")[0]  # RFC 7240 parameters after ";" do not apply to wait
        name, _, value = token.strip().partition("=")
        if name.strip().lower() != "wait":
            continue  # other preferences are not ours to refuse
        value = value.strip().strip('"')
        if not re.fullmatch(r"[0-9]{1,6}", value):
            raise InvalidParameter(
                "Prefer: wait takes whole seconds, e.g. 'Prefer: wait=30'", param="Prefer"
            )
        return min(int(value), MAX_WAIT_SECONDS)
    return None


def _read_statuses(job_ids: list[str]) -> dict[str, str]:
    with session_scope() as session:
        return service.job_statuses(session, job_ids=job_ids)


def _read_job(job_id: str, public_url: str | None) -> JobOut:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        return service.to_job_out(session, [job], public_url=public_url)[0]


async def read_statuses(job_ids: list[str]) -> dict[str, str]:
    return await anyio.to_thread.run_sync(_read_statuses, job_ids)


@dataclass(frozen=True)
class Watch:
    """What a route needs to wait on jobs: the hub, and the read of a job that changed (with
    its links under ``public_url``)."""

    hub: JobWatchHub
    public_url: str | None = None

    async def read_job(self, job_id: str) -> JobOut:
        return await anyio.to_thread.run_sync(_read_job, job_id, self.public_url)


async def get_watch(request: Request) -> Watch:
    watch: Watch = request.app.state.watch
    return watch


WatchDep = Annotated[Watch, Depends(get_watch)]

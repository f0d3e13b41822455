"""The fan-out in one API process: every waiting request and event stream is a watcher of some
jobs; one carrier listener and one periodic re-check serve them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from app.core import metrics
from app.core.notifications.carriers import Carrier

logger = logging.getLogger("fluxgate.notifications")


# Changes kept for watchers that start late (a few seconds' worth at thousands of jobs a second).
RECENT_CHANGES = 10_000

# A notification stays one datagram (the embedded carrier's); an answer larger than this is
# left out, and read by whoever waits for it.
MAX_CARRIED_ANSWER_BYTES = 32 * 1024


def encode_change(job_id: str, status: str, job: bytes | None = None) -> bytes:
    """A notification: a JSON object naming the job and its status and, for an ended job, the
    Job as its owner's answers show it (``job``), so a request waiting for it need not read
    it. A reader that knows only the first two keys (an API process of the previous version,
    during an upgrade) still reads them."""
    head = json.dumps({"job_id": job_id, "status": status})
    if job is None or len(job) > MAX_CARRIED_ANSWER_BYTES:
        return head.encode()
    return head[:-1].encode() + b', "job": ' + job + b"}"


@dataclass(frozen=True)
class Change:
    job_id: str
    status: str
    # The ended job's answer, rendered when it ended; None from a re-check or a bare notice.
    job: bytes | None = None


def _decode(data: bytes | str) -> Change | None:
    try:
        message = json.loads(data)
        job = message.get("job")
        return Change(
            str(message["job_id"]),
            str(message["status"]),
            json.dumps(job, separators=(",", ":"), ensure_ascii=False).encode()
            if isinstance(job, dict)
            else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass(eq=False)
class Watcher:
    """One waiting request or event stream: the changes of the jobs it watches, in order."""

    job_ids: frozenset[str]
    changes: asyncio.Queue[Change] = field(default_factory=asyncio.Queue)
    # The status each job had when the watcher last looked; reconcile compares with it.
    seen: dict[str, str] = field(default_factory=dict)

    async def next_change(self, timeout: float) -> Change | None:
        """The next change, or ``None`` after ``timeout`` seconds of quiet."""
        try:
            return await asyncio.wait_for(self.changes.get(), timeout)
        except TimeoutError:
            return None


StatusReader = Callable[[list[str]], Awaitable[dict[str, str]]]


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "%s stopped; waiting clients now rely on the periodic re-check",
            task.get_name(),
            exc_info=task.exception(),
        )


class JobWatchHub:
    """Fans notifications out to the watchers in this process. One listener per process, one
    reconcile query per interval for all watchers: the database load does not grow with the
    number of waiting clients. Without a carrier, watchers rely on the re-check alone."""

    def __init__(
        self, carrier: Carrier | None, *, read_statuses: StatusReader, reconcile_seconds: float
    ) -> None:
        self._carrier = carrier
        # One query for the statuses of many jobs: the hub's re-check, and each wait's start.
        self.read_statuses = read_statuses
        self._reconcile_seconds = reconcile_seconds
        self._watchers: dict[str, set[Watcher]] = {}
        # The last change of the jobs notified most recently: a request that starts watching
        # a job it has just submitted finds here what happened before it watched, instead of
        # reading the job's status.
        self._recent: OrderedDict[str, Change] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._reconcile_forever(), name="job-reconcile")]
        if self._carrier is None:
            logger.warning("no notification carrier: waiting clients rely on the re-check")
        else:
            listen = self._carrier.listen(self._received, self.reconcile)
            self._tasks.append(asyncio.create_task(listen, name="job-notifications"))
        for task in self._tasks:
            task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # a failure was logged when it happened
        self._tasks = []

    @contextlib.asynccontextmanager
    async def watch(self, job_ids: Iterable[str]) -> AsyncIterator[Watcher]:
        """Watch from now on; read the jobs' state only after entering, so no change slips
        between the read and the watch. Leaving (also by cancellation) forgets the watcher."""
        watcher = Watcher(frozenset(job_ids))
        for job_id in watcher.job_ids:
            self._watchers.setdefault(job_id, set()).add(watcher)
        metrics.JOB_WATCHERS.inc()
        try:
            yield watcher
        finally:
            metrics.JOB_WATCHERS.dec()
            for job_id in watcher.job_ids:
                group = self._watchers.get(job_id)
                if group is not None:
                    group.discard(watcher)
                    if not group:
                        del self._watchers[job_id]

    def recent_change(self, job_id: str) -> Change | None:
        """The job's last change notified to this process, if it was among the latest."""
        return self._recent.get(job_id)

    def _received(self, data: bytes) -> None:
        change = _decode(data)
        if change is None:
            return
        metrics.JOB_NOTIFICATIONS.inc()
        # The status only: an answer is kept for the watchers waiting now, not for jobs nobody
        # may ask about (10,000 answers of up to 32 KiB would be 320 MiB a process).
        self._recent[change.job_id] = Change(change.job_id, change.status)
        self._recent.move_to_end(change.job_id)
        if len(self._recent) > RECENT_CHANGES:
            self._recent.popitem(last=False)
        for watcher in self._watchers.get(change.job_id, ()):
            watcher.changes.put_nowait(change)

    async def reconcile(self) -> None:
        """One query for every watched job; tell watchers about changes they missed."""
        if not self._watchers:
            return
        statuses = await self.read_statuses(list(self._watchers))
        for job_id, status in statuses.items():
            for watcher in list(self._watchers.get(job_id, ())):
                if watcher.seen.get(job_id) != status:
                    watcher.changes.put_nowait(Change(job_id, status))

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_seconds)
            try:
                await self.reconcile()
            except Exception:
                logger.warning("reconciling watched jobs failed", exc_info=True)

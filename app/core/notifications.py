"""Job-change notifications from whoever changes a job (workers, the API) to the API processes
holding waiting requests and event streams, so those wait on a push instead of each polling the
database.

Two carriers, chosen by the settings: Redis pub/sub where a Redis is configured, else (the
embedded default, where everything runs on one machine) a Unix datagram socket per API process
in a folder that publishers scan. Notifications are hints: a lost one costs a client a little
latency (the hub re-checks watched jobs now and then), never a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from app.core.settings import Settings, get_settings

logger = logging.getLogger("fluxgate.notifications")

CHANNEL = "fluxgate:job-changes"
# Datagram sockets need short paths (about 100 bytes), so they live under /tmp, in a folder
# named after the broker folder: every process of one installation finds the same one. The
# folder is created 0700 and refused if someone else owns it (see _private_folder).
_TMP = Path("/tmp")  # noqa: S108  # not TMPDIR: that may be a long path
_SOCKET_PARENT = _TMP if _TMP.is_dir() else Path(tempfile.gettempdir())


def socket_folder(broker_folder: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(broker_folder).encode()).hexdigest()[:16]
    return _SOCKET_PARENT / f"fluxgate-{os.getuid()}-{digest}"


def _private_folder(path: Path) -> Path:
    """Create the socket folder, or refuse one that someone else could write into."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{path} must belong to this user with mode 0700")
    return path


def _encode(job_id: str, status: str) -> bytes:
    return json.dumps({"job_id": job_id, "status": status}).encode()


def _decode(data: bytes | str) -> tuple[str, str] | None:
    try:
        message = json.loads(data)
        return str(message["job_id"]), str(message["status"])
    except (ValueError, KeyError, TypeError):
        return None


# Publishing (any process, any thread).


class _Publisher:
    def __init__(self, settings: Settings) -> None:
        self._redis = (
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
            if settings.redis_url
            else None
        )
        folder = settings.broker_folder
        self._folder = socket_folder(folder) if self._redis is None and folder else None

    def publish(self, job_id: str, status: str) -> None:
        data = _encode(job_id, status)
        if self._redis is not None:
            self._redis.publish(CHANNEL, data)
        elif self._folder is not None and self._folder.is_dir():
            self._send_to_listeners(self._folder, data)

    @staticmethod
    def _send_to_listeners(folder: Path, data: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for entry in os.scandir(folder):
                if not entry.name.endswith(".sock"):
                    continue
                try:
                    sender.sendto(data, entry.path)
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its API process is gone.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                except BlockingIOError:
                    pass  # that listener is behind; its reconcile pass catches up


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def publish_job_changed(job_id: str, status: str) -> None:
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = _Publisher(get_settings())
    _publisher.publish(job_id, status)


# Listening (API processes, on their event loop).


@dataclass(eq=False)
class Watcher:
    """One waiting request or event stream: the changes of the jobs it watches, in order."""

    job_ids: frozenset[str]
    changes: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    # The status each job had when the watcher last looked; reconcile compares with it.
    seen: dict[str, str] = field(default_factory=dict)

    async def next_change(self, timeout: float) -> tuple[str, str] | None:
        """The next (job_id, status), or ``None`` after ``timeout`` seconds of quiet."""
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
    number of waiting clients."""

    def __init__(
        self, settings: Settings, *, read_statuses: StatusReader, reconcile_seconds: float
    ) -> None:
        self._settings = settings
        # One query for the statuses of many jobs: the hub's re-check, and each wait's start.
        self.read_statuses = read_statuses
        self._reconcile_seconds = reconcile_seconds
        self._watchers: dict[str, set[Watcher]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.notifications_received = 0

    @property
    def watcher_count(self) -> int:
        return len({watcher for group in self._watchers.values() for watcher in group})

    async def start(self) -> None:
        if self._settings.redis_url:
            listen: Callable[[], Coroutine[Any, Any, None]] = self._listen_redis
        else:
            listen = self._listen_socket
        self._tasks = [
            asyncio.create_task(listen(), name="job-notifications"),
            asyncio.create_task(self._reconcile_forever(), name="job-reconcile"),
        ]
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
        try:
            yield watcher
        finally:
            for job_id in watcher.job_ids:
                group = self._watchers.get(job_id)
                if group is not None:
                    group.discard(watcher)
                    if not group:
                        del self._watchers[job_id]

    def _dispatch(self, job_id: str, status: str) -> None:
        for watcher in self._watchers.get(job_id, ()):
            watcher.changes.put_nowait((job_id, status))

    def _received(self, data: bytes | str) -> None:
        decoded = _decode(data)
        if decoded is not None:
            self.notifications_received += 1
            self._dispatch(*decoded)

    async def reconcile(self) -> None:
        """One query for every watched job; tell watchers about changes they missed."""
        if not self._watchers:
            return
        statuses = await self.read_statuses(list(self._watchers))
        for job_id, status in statuses.items():
            for watcher in list(self._watchers.get(job_id, ())):
                if watcher.seen.get(job_id) != status:
                    watcher.changes.put_nowait((job_id, status))

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_seconds)
            try:
                await self.reconcile()
            except Exception:
                logger.warning("reconciling watched jobs failed", exc_info=True)

    async def _listen_redis(self) -> None:
        assert self._settings.redis_url is not None
        while True:
            client = redis.asyncio.Redis.from_url(self._settings.redis_url)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    # Changes made while we were not subscribed: catch up now.
                    await self.reconcile()
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is not None and message.get("type") == "message":
                            self._received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("job notifications from Redis interrupted; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    async def _listen_socket(self) -> None:
        folder = self._settings.broker_folder
        if folder is None:
            logger.warning("no Redis and no broker folder: waiting clients rely on reconcile")
            return
        path = _private_folder(socket_folder(folder)) / f"{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        hub = self

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                hub._received(data)

        try:
            sock.bind(str(path))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(Receiver, sock=sock)
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                transport.close()
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

"""The API's side of the metrics: every request counted by route template, and the
``/metrics`` answer (all of this API's processes together in multiprocess mode)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.settings import ConfigError, Settings

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests no route matched (scanners, typos) share one label: a label per path would let
# any client grow the metrics without bound.
UNMATCHED = "unmatched"


class RequestMetrics:
    """Counts every answer by route template, method and status, and times it to its last
    byte. Outermost, so answers other middleware give (413, 408) are counted too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "other"
            metrics.HTTP_REQUESTS.labels(template, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(template).observe(time.perf_counter() - started)


def serve_metrics(*, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """``registry`` on ``http://host:port/metrics`` from a thread of this process (a worker's
    own metrics, or the API's when it has a metrics port); a port that is taken stops the
    process with one line."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of API processes that are gone (uvicorn restarts a worker that
    died), or their last values would count forever; counters keep theirs, as they should."""
    pids = {
        int(match[1])
        for path in Path(directory).glob("gauge_live*_*.db")
        if (match := re.fullmatch(r"gauge_live\w+_(\d+)\.db", path.name))
    }
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    # A process that died but that uvicorn has not reaped yet is a zombie: dead all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: the signal's answer stands
    return state not in ("Z", "X")


class ApiMetrics(Collector):
    """The API's metrics: every process's, when they share a multiprocess directory (the live
    gauges of dead ones dropped first), else this process's; then ``collectors``' (read at
    scrape time)."""

    def __init__(self, settings: Settings, collectors: Sequence[Collector]) -> None:
        self._directory = settings.prometheus_multiproc_dir
        self._collectors = list(collectors)

    def collect(self) -> Iterable[Metric]:
        if self._directory is not None:
            forget_dead_processes(self._directory)
            processes = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                processes, path=self._directory
            )
            yield from processes.collect()
        else:
            yield from REGISTRY.collect()
        for collector in self._collectors:
            yield from collector.collect()


def api_registry(settings: Settings, collectors: Sequence[Collector]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApiMetrics(settings, collectors))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text of ``/metrics``."""
    return generate_latest(registry)

"""Heartbeat files, for container healthchecks and Kubernetes liveness probes.

A worker's consumer, or beat's scheduler, touches the file while it works; the check only looks
at the file's age. That is lighter than ``celery inspect ping`` (a round trip through the broker
to every worker) and needs nothing but a file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from celery import Celery, bootsteps
from celery.beat import Scheduler

# How often the file is touched; a check calls it stale after several of these (60 s in the
# deployment files), so a slow moment is not a failure.
HEARTBEAT_SECONDS = 10.0


def touch(path: Path) -> None:
    """Create ``path`` or bring its modification time, the heartbeat, to now."""
    path.touch()


def add_to_worker(app: Celery, path: Path, *, every: float = HEARTBEAT_SECONDS) -> None:
    """Have the worker's consumer touch ``path`` from its own timer, so the file goes stale
    when the consumer is stopped or stuck (a lost broker it has not got back), not only when
    the process is gone."""

    class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
        # Started once the consumer is connected and consuming, not before.
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.timer_entry: Any = None

        def start(self, consumer: Any) -> None:
            touch(path)
            self.timer_entry = consumer.timer.call_repeatedly(every, touch, (path,))

        def stop(self, consumer: Any) -> None:
            if self.timer_entry is not None:
                self.timer_entry.cancel()
                self.timer_entry = None

        shutdown = stop

    app.steps["consumer"].add(Heartbeat)


class HeartbeatScheduler(Scheduler):  # type: ignore[misc]  # Celery is untyped
    """Celery's default scheduler, touching :attr:`heartbeat_file` (when set) on every tick
    and ticking at least every :data:`HEARTBEAT_SECONDS`."""

    heartbeat_file: ClassVar[Path | None] = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        if self.heartbeat_file is None:
            return interval
        touch(self.heartbeat_file)
        return min(interval, HEARTBEAT_SECONDS)

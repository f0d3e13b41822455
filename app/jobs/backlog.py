"""What is waiting, for the metrics: jobs queued and running, the oldest queued job's age,
webhook deliveries pending and failing. Read by the API at scrape time in one statement, at
most once per :data:`CACHE_SECONDS` however often it is scraped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.core.orm import utcnow
from app.jobs.models import Job, JobStatus
from app.webhooks.models import DeliveryStatus, WebhookDelivery

CACHE_SECONDS = 5.0
DEPENDENCY_ERRORS = (OperationalError, PoolTimeout)
logger = logging.getLogger("fluxgate.metrics")


@dataclass(frozen=True)
class Backlog:
    queued: int
    running: int
    oldest_queued_at: datetime | None
    deliveries_pending: int
    # Pending after at least one failed attempt: a receiver that is down or refusing.
    deliveries_failing: int


def read_backlog(session: Session) -> Backlog:
    jobs_in = select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)
    running = select(func.count()).select_from(Job).where(Job.status == JobStatus.RUNNING)
    # Ids sort by creation time: the first queued id by the (status, id) index is the oldest.
    oldest = select(Job.created_at).where(Job.status == JobStatus.QUEUED).order_by(Job.id).limit(1)
    pending = WebhookDelivery.status == DeliveryStatus.PENDING
    deliveries = select(func.count()).select_from(WebhookDelivery).where(pending)
    failing = deliveries.where(WebhookDelivery.attempts > 0)
    row = session.execute(
        select(
            jobs_in.scalar_subquery(),
            running.scalar_subquery(),
            oldest.scalar_subquery(),
            deliveries.scalar_subquery(),
            failing.scalar_subquery(),
        )
    ).one()
    return Backlog(
        queued=int(row[0]),
        running=int(row[1]),
        oldest_queued_at=row[2],
        deliveries_pending=int(row[3]),
        deliveries_failing=int(row[4]),
    )


class BacklogCollector(Collector):
    """The backlog as gauges, read through ``read`` (a transaction of its own) and cached."""

    def __init__(self, read: Callable[[], Backlog] | None = None) -> None:
        self._read = read or _read_in_a_transaction
        self._lock = threading.Lock()
        self._cached: Backlog | None = None
        self._read_at = 0.0

    def backlog(self) -> Backlog | None:
        """The backlog read at most CACHE_SECONDS ago; the last one read while the database is
        out of reach (a scrape must still show the API's own metrics then), None before any."""
        with self._lock:  # concurrent scrapes share one read
            if self._cached is None or time.monotonic() - self._read_at >= CACHE_SECONDS:
                # Tried again only after CACHE_SECONDS, so scrapes during an outage do not
                # each wait on the database.
                self._read_at = time.monotonic()
                try:
                    self._cached = self._read()
                except DEPENDENCY_ERRORS:
                    logger.warning("could not read the backlog for /metrics", exc_info=True)
            return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = self.backlog()
        if backlog is None:
            return
        yield GaugeMetricFamily(
            "fluxgate_jobs_queued", "Jobs queued now (due or waiting to retry).", backlog.queued
        )
        yield GaugeMetricFamily("fluxgate_jobs_running", "Jobs running now.", backlog.running)
        age = (
            0.0
            if backlog.oldest_queued_at is None
            else max(0.0, (utcnow() - backlog.oldest_queued_at).total_seconds())
        )
        yield GaugeMetricFamily(
            "fluxgate_jobs_oldest_queued_age_seconds",
            "Age of the oldest queued job (0 when none is queued).",
            age,
        )
        deliveries = GaugeMetricFamily(
            "fluxgate_webhook_deliveries",
            "Webhook deliveries still to make: pending (all of them), failing (pending after a "
            "failed attempt).",
            labels=["state"],
        )
        deliveries.add_metric(["pending"], backlog.deliveries_pending)
        deliveries.add_metric(["failing"], backlog.deliveries_failing)
        yield deliveries


def _read_in_a_transaction() -> Backlog:
    with session_scope() as session:
        return read_backlog(session)

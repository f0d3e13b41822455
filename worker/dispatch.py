"""Sending work to the broker. Messages carry job ids only; the database holds the rest."""

from __future__ import annotations

import logging

from app.db import with_transaction
from app.jobs.service import mark_not_enqueued
from worker.celery_app import (
    DELIVER_WEBHOOK_TASK,
    FORWARD_TASK,
    JOBS_QUEUE,
    WEBHOOKS_QUEUE,
    celery_app,
)

logger = logging.getLogger("fluxgate.dispatch")


def enqueue_forward(job_id: str, *, countdown: float | None = None) -> None:
    """Call only after the job's row is committed, or the worker may not find it."""
    celery_app.send_task(FORWARD_TASK, args=[job_id], queue=JOBS_QUEUE, countdown=countdown)


def send_job(job_id: str, *, countdown: float | None = None) -> None:
    """Send a committed job a message; with the broker unreachable, mark it as having none,
    so the sweeper sends it at its next pass (not REQUEUE_AFTER_SECONDS later). Never raises:
    the job is committed either way, and the sweeper finds it in the end."""
    try:
        enqueue_forward(job_id, countdown=countdown)
    except Exception:
        logger.warning("broker unavailable; job %s left for the sweeper", job_id, exc_info=True)
        try:
            with_transaction(lambda session: mark_not_enqueued(session, job_id=job_id))
        except Exception:
            logger.warning("database unavailable too; job %s waits for REQUEUE_AFTER", job_id)


def check_broker(*, timeout: float) -> None:
    """Raise if the broker does not answer within ``timeout`` seconds."""
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)


def enqueue_webhook(delivery_id: str, *, countdown: float | None = None) -> None:
    """Call only after the delivery's row is committed."""
    celery_app.send_task(
        DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, countdown=countdown
    )

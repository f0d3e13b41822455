"""Sending work to the broker. Messages carry job ids only; the database holds the rest."""

from __future__ import annotations

from worker.celery_app import (
    DELIVER_WEBHOOK_TASK,
    FORWARD_TASK,
    JOBS_QUEUE,
    WEBHOOKS_QUEUE,
    celery_app,
)


def enqueue_forward(job_id: str, *, countdown: float | None = None) -> None:
    """Call only after the job's row is committed, or the worker may not find it."""
    celery_app.send_task(FORWARD_TASK, args=[job_id], queue=JOBS_QUEUE, countdown=countdown)


def check_broker(*, timeout: float) -> None:
    """Raise if the broker does not answer within ``timeout`` seconds."""
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)


def enqueue_webhook(delivery_id: str, *, countdown: float | None = None) -> None:
    """Call only after the delivery's row is committed."""
    celery_app.send_task(
        DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, countdown=countdown
    )

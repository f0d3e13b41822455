"""The broker port: queue and task names, and the task messages Fluxgate sends.

Messages carry ids only; the database holds the rest. Only the outbox (app/core/outbox.py)
sends, after the transaction that caused a message has committed. The worker (worker/tasks.py)
registers the tasks under these names; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from app.core.settings import Settings

JOBS_QUEUE = "fluxgate.jobs"
MAINTENANCE_QUEUE = "fluxgate.maintenance"
# Its own queue, so receivers that are slow or down never hold up image jobs (run a worker
# with --queues webhooks for it, as docker-compose.yml and fluxgate dev do).
WEBHOOKS_QUEUE = "fluxgate.webhooks"
QUEUES = {"jobs": JOBS_QUEUE, "webhooks": WEBHOOKS_QUEUE, "maintenance": MAINTENANCE_QUEUE}
DELIVER_WEBHOOK_TASK = "fluxgate.deliver_webhook"
FORWARD_TASK = "fluxgate.forward_job"
SWEEP_TASK = "fluxgate.sweep"
ROLLUP_USAGE_TASK = "fluxgate.rollup_usage"
PURGE_TASK = "fluxgate.purge_expired"

celery_app = Celery("fluxgate")


@dataclass(frozen=True)
class Broker:
    """Where messages go: the broker URL, kombu's transport class and its options."""

    url: str
    transport: str
    options: dict[str, Any] = field(default_factory=dict)


def configure(settings: Settings, broker: Broker) -> Celery:
    celery_app.conf.update(
        broker_url=broker.url,
        broker_transport=broker.transport,
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker.options,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # Ack only after the task ran, and give the message back if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=JOBS_QUEUE,
        task_routes={
            SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
            ROLLUP_USAGE_TASK: {"queue": MAINTENANCE_QUEUE},
            PURGE_TASK: {"queue": MAINTENANCE_QUEUE},
            DELIVER_WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
        },
        # Publishing happens inside an HTTP request: fail fast rather than hang it.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
            "rollup-usage": {
                "task": ROLLUP_USAGE_TASK,
                "schedule": settings.usage_rollup_interval_seconds,
            },
            # Images past IMAGE_RETENTION_DAYS, and what else is past its use.
            "purge-expired": {
                "task": PURGE_TASK,
                "schedule": settings.retention_interval_seconds,
            },
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return celery_app


def send_forward(job_id: str, *, countdown: float | None = None) -> None:
    celery_app.send_task(FORWARD_TASK, args=[job_id], queue=JOBS_QUEUE, countdown=countdown)


def send_delivery(delivery_id: str, *, countdown: float | None = None) -> None:
    celery_app.send_task(
        DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, countdown=countdown
    )


def check_broker(*, timeout: float) -> None:
    """Raise if the broker does not answer within ``timeout`` seconds."""
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)

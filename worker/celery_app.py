"""The Celery application: broker settings and queues. Tasks live in :mod:`worker.tasks`."""

from __future__ import annotations

from pathlib import Path
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

celery_app = Celery("fluxgate", include=["worker.tasks"])


FILESYSTEM_TRANSPORT = "worker.transports:AtomicFilesystemTransport"
REDIS_TRANSPORT = "worker.transports:RecoveringRedisTransport"


def _transport(settings: Settings) -> tuple[str, str | None, dict[str, Any]]:
    """The broker URL, transport class and options: Redis, or a broker folder on disk."""
    folder = settings.broker_folder
    if folder is None:
        return (
            settings.effective_broker_url,
            REDIS_TRANSPORT,
            {
                # Messages of a worker that died unacked come back after this; the sweeper
                # usually gets there first (job_lease_seconds).
                "visibility_timeout": max(3600, int(settings.job_lease_seconds * 2)),
                "socket_connect_timeout": 5,
            },
        )
    messages = Path(folder) / "messages"
    control = Path(folder) / "control"
    for path in (messages, control):
        path.mkdir(parents=True, exist_ok=True)
    return (
        "filesystem://",
        FILESYSTEM_TRANSPORT,
        {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "control_folder": str(control),
            "store_processed": False,
            # Pick-up latency of a queued job: the transport polls the folder.
            "polling_interval": 0.1,
        },
    )


def configure(settings: Settings) -> Celery:
    broker_url, transport, transport_options = _transport(settings)
    celery_app.conf.update(
        broker_url=broker_url,
        broker_transport=transport,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
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
            DELIVER_WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
        },
        # Publishing happens inside an HTTP request: fail fast rather than hang it.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return celery_app

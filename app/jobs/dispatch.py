"""Sending committed jobs to the broker (through worker/dispatch.py): the API after a
submission, the worker for a retry or a slot it could not use, the sweeper for lost messages."""

from __future__ import annotations

import logging

from app.core.db import with_transaction
from app.jobs.service import mark_not_enqueued
from worker.dispatch import enqueue_forward

logger = logging.getLogger("fluxgate.dispatch")


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

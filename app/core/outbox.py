"""Messages that leave the process only once the transaction that caused them commits.

Services record them with :func:`add`; after the commit they go out (broker messages for
webhook deliveries, job-change notifications for waiting clients); a rollback drops them. So a
worker never receives an id it cannot find yet, and nobody is told about a change that did not
happen. A message lost after the commit is not fatal: the sweeper re-sends due deliveries and
waiting clients re-check their jobs now and then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from app.core import notifications

logger = logging.getLogger("fluxgate.outbox")

_PENDING = "fluxgate.outbox"


@dataclass(frozen=True)
class JobChanged:
    job_id: str
    status: str


@dataclass(frozen=True)
class DeliverWebhook:
    delivery_id: str
    countdown: float | None = None


Message = JobChanged | DeliverWebhook


def add(session: Session, message: Message) -> None:
    session.info.setdefault(_PENDING, []).append(message)


def _send(message: Message) -> None:
    if isinstance(message, JobChanged):
        notifications.publish_job_changed(message.job_id, message.status)
    else:
        from worker.dispatch import enqueue_webhook  # the broker side; imports Celery

        enqueue_webhook(message.delivery_id, countdown=message.countdown)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for message in session.info.pop(_PENDING, []):
        try:
            _send(message)
        except Exception:
            logger.warning(
                "could not send %s after commit; it will be retried", message, exc_info=True
            )


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    # Only the outermost transaction's rollback means none of it happened; a savepoint's
    # rollback leaves the rest of the transaction (and its messages) standing.
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)

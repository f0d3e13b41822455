"""The one way out of a transaction: messages that leave only once the transaction that caused
them commits.

Services record them with :func:`add`; after the commit they go out (a job to forward and a
webhook delivery to make, through the broker port; a job's change, to waiting clients; a count
for the metrics); a rollback drops them. So a worker never receives an id it cannot find yet,
and nobody is told about a change that did not happen. A message lost after the commit is not
fatal: a job whose message could not be published is marked as having none (the sweeper sends
one at its next pass), due deliveries are re-sent by the sweeper, and waiting clients re-check
their jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from app.core import queue

logger = logging.getLogger("fluxgate.outbox")

_PENDING = "fluxgate.outbox"


@dataclass(frozen=True)
class ForwardJob:
    """A dispatch slot for a queued job (a worker then runs the fairest due job)."""

    job_id: str
    countdown: float | None = None


@dataclass(frozen=True)
class DeliverWebhook:
    delivery_id: str
    countdown: float | None = None


@dataclass(frozen=True)
class JobChanged:
    job_id: str
    status: str
    # An ended job's answer (its JSON), for the requests waiting for it. Never in a repr: a
    # message that cannot be sent is logged, and the answer holds the prompt and metadata.
    job: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Counted:
    """Something the transaction did, counted in a metric of app/core/metrics.py (a job
    accepted, a charge made): a rollback counts nothing."""

    counter: Counter
    labels: tuple[str, ...] = ()
    amount: float = 1.0

    def count(self) -> None:
        (self.counter.labels(*self.labels) if self.labels else self.counter).inc(self.amount)


Message = ForwardJob | DeliverWebhook | JobChanged | Counted


@dataclass(frozen=True)
class Connections:
    """What this process sends through besides the broker; set by its edge at start-up
    (app/backends.py builds it)."""

    # Tell other processes a job changed (a hint for waiting clients).
    publish_change: Callable[[JobChanged], None]
    # A job's message could not be published: leave the job for the sweeper's next pass.
    job_unsent: Callable[[str], None]


_connections: Connections | None = None


def connect(connections: Connections) -> None:
    global _connections
    _connections = connections


def add(session: Session, message: Message) -> None:
    """Send ``message`` once ``session``'s transaction commits; never if it rolls back."""
    session.info.setdefault(_PENDING, []).append(message)


def pending(session: Session) -> list[Message]:
    """What ``session``'s transaction will send if it commits, in order."""
    return list(session.info.get(_PENDING, []))


def send_now(message: Message) -> None:
    """Send a message no transaction stands behind (a dispatch slot handed back while the
    database is out of reach). Never raises."""
    try:
        _send(message)
    except Exception:
        logger.warning(
            "could not send %s; it will be retried (a job by the sweeper)", message, exc_info=True
        )
        _unsent(message)


def _send(message: Message) -> None:
    if isinstance(message, ForwardJob):
        queue.send_forward(message.job_id, countdown=message.countdown)
    elif isinstance(message, DeliverWebhook):
        queue.send_delivery(message.delivery_id, countdown=message.countdown)
    elif isinstance(message, Counted):
        message.count()
    elif _connections is not None:
        _connections.publish_change(message)


def _unsent(message: Message) -> None:
    if not isinstance(message, ForwardJob) or _connections is None:
        return  # deliveries: the sweeper re-sends due ones; changes: clients re-check
    try:
        _connections.job_unsent(message.job_id)
    except Exception:
        logger.warning("database unavailable too; job %s waits for REQUEUE_AFTER", message.job_id)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for message in session.info.pop(_PENDING, []):
        send_now(message)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    # Only the outermost transaction's rollback means none of it happened; a savepoint's
    # rollback leaves the rest of the transaction (and its messages) standing.
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)

"""Webhook deliveries: record a job's event, claim an attempt, record what it saw, schedule the
next, list, redeliver, sweep. Services flush; the edge commits; messages go via the outbox."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from app.core import metrics, outbox
from app.core.db import rows_affected
from app.core.errors import Conflict, InvalidParameter, NotFound
from app.core.ids import new_id
from app.core.orm import utcnow
from app.core.paging import newest_first
from app.keys.models import ApiKey
from app.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from app.webhooks.schemas import DeliveryOut, delivery_out
from app.webhooks.sender import SendResult

# A broker message with a countdown carries retries due soon; later ones wait in the table
# for the sweeper (a message held for hours would outlive broker visibility timeouts).
COUNTDOWN_MAX_SECONDS = 60.0
# Clocks of different workers differ a little: a message may arrive just before it is due.
EARLY_TOLERANCE = timedelta(seconds=2)


def record_event(
    session: Session,
    *,
    job_id: str,
    api_key_id: str,
    url: str,
    event_type: str,
    data: dict[str, Any],
    at: datetime,
) -> WebhookDelivery:
    """The delivery of one job event, its body fixed now; the first attempt goes out right
    after the commit."""
    payload = json.dumps(
        {"type": event_type, "timestamp": at.isoformat().replace("+00:00", "Z"), "data": data},
        separators=(",", ":"),
    )
    delivery = WebhookDelivery(
        id=new_id("msg"),
        job_id=job_id,
        api_key_id=api_key_id,
        event_type=event_type,
        url=url,
        payload=payload,
        status=DeliveryStatus.PENDING,
        attempts=0,
        schedule_step=0,
        next_attempt_at=at,
        enqueued_at=at,
        created_at=at,
    )
    session.add(delivery)
    session.flush()
    outbox.add(session, outbox.DeliverWebhook(delivery.id))
    return delivery


@dataclass(frozen=True)
class DeliveryClaim:
    delivery_id: str
    job_id: str
    key_id: str
    number: int  # this attempt's number, 1-based
    schedule_step: int  # the delay of the retry schedule that led to this attempt
    url: str
    payload: str
    secrets: tuple[str, ...]


def signing_secrets(api_key: ApiKey, *, now: datetime) -> tuple[str, ...]:
    """The key's secret, and the one it replaced while that is in its grace period."""
    previous = api_key.previous_webhook_secret
    expires = api_key.previous_webhook_secret_expires_at
    if previous is not None and expires is not None and expires > now:
        return (api_key.webhook_secret, previous)
    return (api_key.webhook_secret,)


def claim(
    session: Session, *, delivery_id: str, lease_seconds: float, now: datetime | None = None
) -> DeliveryClaim | None:
    """Take the delivery's due attempt under a lease; ``None`` if it is not due, done, or
    already being attempted (a duplicate message)."""
    now = now or utcnow()
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now + EARLY_TOLERANCE,
            _not_leased(now),
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            enqueued_at=None,
        )
        .returning(
            WebhookDelivery.attempts,
            WebhookDelivery.schedule_step,
            WebhookDelivery.url,
            WebhookDelivery.payload,
            WebhookDelivery.api_key_id,
            WebhookDelivery.job_id,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if claimed is None:
        return None
    number, step, url, payload, api_key_id, job_id = claimed
    return DeliveryClaim(
        delivery_id=delivery_id,
        job_id=job_id,
        key_id=api_key_id,
        number=number,
        schedule_step=step,
        url=url,
        payload=payload,
        secrets=signing_secrets(session.get_one(ApiKey, api_key_id), now=now),
    )


def _not_leased(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now)


def describe_failure(result: SendResult) -> str | None:
    """Why an attempt did not count as delivered, in words for the deliveries list."""
    if result.ok:
        return None
    if result.error is not None:
        return result.error
    code = result.status_code
    if code == 410:
        return "the receiver answered 410 Gone; no more attempts"
    if code is not None and 300 <= code < 400:
        return f"the receiver answered {code}; redirects are not followed"
    return f"the receiver answered {code}"


def record_attempt(
    session: Session,
    *,
    claim: DeliveryClaim,
    result: SendResult,
    started_at: datetime,
    delays: tuple[float, ...],
    rng: random.Random | None = None,
) -> datetime | None:
    """Store the attempt and move the delivery on: done on a 2xx; over on a 410, an unsafe
    URL or an exhausted schedule; else the next attempt after the schedule's next delay (with
    up to 10% jitter). Returns when the next attempt is due, or ``None``."""
    rng = rng or random.Random()
    now = utcnow()
    next_at: datetime | None = None
    step = claim.schedule_step
    if result.ok:
        status = DeliveryStatus.SUCCEEDED
    elif result.refused or result.status_code == 410 or step + 1 >= len(delays):
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
        step += 1
        delay = delays[step] * (1 + rng.uniform(0, 0.1))
        next_at = now + timedelta(seconds=delay)
    error = describe_failure(result)
    # Retries due soon ride on a broker countdown (a message is on its way); later ones are
    # left to the sweeper.
    countdown = None if next_at is None else (next_at - now).total_seconds()
    if countdown is not None and countdown > COUNTDOWN_MAX_SECONDS:
        countdown = None
    updated = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claim.delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.attempts == claim.number,
            # A redelivery clears the lease: an attempt from before it changes nothing.
            WebhookDelivery.lease_expires_at.is_not(None),
        )
        .values(
            status=status,
            schedule_step=step,
            next_attempt_at=next_at,
            lease_expires_at=None,
            last_status_code=result.status_code,
            last_error=error,
            completed_at=None if status == DeliveryStatus.PENDING else now,
            enqueued_at=None if countdown is None else now,
        )
        .execution_options(synchronize_session=False)
    )
    if rows_affected(updated) != 1:
        # A sweep or a redelivery took over: this attempt is history, it schedules nothing.
        next_at = countdown = None
    session.add(
        WebhookAttempt(
            delivery_id=claim.delivery_id,
            number=claim.number,
            started_at=started_at,
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=error,
            response_excerpt=result.excerpt,
            next_attempt_at=next_at,
        )
    )
    if countdown is not None:
        outbox.add(session, outbox.DeliverWebhook(claim.delivery_id, countdown=countdown))
    outbox.add(session, outbox.Counted(metrics.WEBHOOK_ATTEMPTS, (result.outcome,)))
    session.flush()
    return next_at


def sweep(
    session: Session, *, requeue_after_seconds: float, batch: int = 500, now: datetime | None = None
) -> list[str]:
    """Send every due attempt that has no message on its way: retries due later than a
    countdown covers, messages lost by the broker, attempts whose worker died."""
    now = now or utcnow()
    stale = now - timedelta(seconds=requeue_after_seconds)
    due = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                _not_leased(now),
                or_(
                    WebhookDelivery.enqueued_at.is_(None),
                    and_(
                        WebhookDelivery.enqueued_at < stale,
                        WebhookDelivery.next_attempt_at < stale,
                    ),
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(batch)
        )
    )
    if due:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        for delivery_id in due:
            outbox.add(session, outbox.DeliverWebhook(delivery_id))
    return due


def clear_excerpts(session: Session, *, before: datetime, limit: int) -> int:
    """Forget the receivers' answer excerpts of up to ``limit`` attempts started before
    ``before`` (beat's purge, after IMAGE_RETENTION_DAYS): they are for debugging a receiver,
    and may hold whatever it sent. The attempts themselves, their status and timing, stay."""
    due = (
        select(WebhookAttempt.id)
        .where(WebhookAttempt.response_excerpt.is_not(None), WebhookAttempt.started_at < before)
        .limit(limit)
    )
    return rows_affected(
        session.execute(
            update(WebhookAttempt)
            .where(WebhookAttempt.id.in_(due))
            .values(response_excerpt=None)
            .execution_options(synchronize_session=False)
        )
    )


def redeliver(session: Session, *, delivery_id: str) -> WebhookDelivery:
    """Send the same event again now (same ``webhook-id``), with the retry schedule from its
    start; a delivery with an attempt in flight is a conflict."""
    delivery = get_delivery(session, delivery_id=delivery_id)
    now = utcnow()
    updated = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, _not_leased(now))
        .values(
            status=DeliveryStatus.PENDING,
            schedule_step=0,
            next_attempt_at=now,
            enqueued_at=now,
            lease_expires_at=None,
            completed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if rows_affected(updated) != 1:
        raise Conflict(
            f"delivery {delivery_id} has an attempt in flight; try again when it has finished",
            code="delivery_in_progress",
        )
    outbox.add(session, outbox.DeliverWebhook(delivery_id))
    session.refresh(delivery)
    return delivery


def get_delivery(session: Session, *, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}", code="delivery_not_found", param="id")
    return delivery


def deliveries_of_job(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        )
    )


FILTERS = ("failing", "pending", "succeeded", "failed")


def list_deliveries(
    session: Session, *, state: str | None, limit: int, cursor: str | None
) -> tuple[list[WebhookDelivery], str | None]:
    """Every key's deliveries, newest first. ``failing``: given up, or still retrying after
    a failed attempt."""
    if state is not None and state not in FILTERS:
        raise InvalidParameter(f"status must be one of {', '.join(FILTERS)}", param="status")
    query = select(WebhookDelivery)
    if state == "failing":
        query = query.where(
            or_(
                WebhookDelivery.status == DeliveryStatus.FAILED,
                and_(
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.last_error.is_not(None),
                ),
            )
        )
    elif state is not None:
        query = query.where(WebhookDelivery.status == state)
    return newest_first(
        session, query, id_column=WebhookDelivery.id, prefix="msg", limit=limit, cursor=cursor
    )


def attempts_of(session: Session, *, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    """Each delivery's attempts, oldest first, in one query."""
    found: dict[str, list[WebhookAttempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if delivery_ids:
        rows = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        )
        for attempt in rows:
            found[attempt.delivery_id].append(attempt)
    return found


def to_delivery_out(session: Session, deliveries: Sequence[WebhookDelivery]) -> list[DeliveryOut]:
    """The deliveries as the API shows them, their attempts loaded in one query."""
    attempts = attempts_of(session, delivery_ids=[delivery.id for delivery in deliveries])
    return [delivery_out(delivery, attempts[delivery.id]) for delivery in deliveries]

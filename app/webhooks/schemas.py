from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from app.webhooks.models import WebhookAttempt, WebhookDelivery


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    next_attempt_at: datetime | None


class DeliveryOut(BaseModel):
    id: str  # the webhook-id header, the same on every attempt
    object: Literal["webhook_delivery"] = "webhook_delivery"
    job_id: str
    api_key_id: str
    event_type: str
    url: str
    status: str
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None
    attempts: list[AttemptOut]


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryOut]
    next_cursor: str | None = None


def delivery_out(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        job_id=delivery.job_id,
        api_key_id=delivery.api_key_id,
        event_type=delivery.event_type,
        url=delivery.url,
        status=delivery.status,
        attempt_count=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        completed_at=delivery.completed_at,
        attempts=[
            AttemptOut(
                number=attempt.number,
                started_at=attempt.started_at,
                duration_ms=attempt.duration_ms,
                status_code=attempt.status_code,
                error=attempt.error,
                response_excerpt=attempt.response_excerpt,
                next_attempt_at=attempt.next_attempt_at,
            )
            for attempt in attempts
        ],
    )

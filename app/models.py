"""Every table, imported in one place so Alembic and the services see the whole schema."""

from app.billing.models import BudgetPeriod, Charge, Price
from app.core.db import Base
from app.jobs.models import IdempotencyKey, ImageLink, Job, JobImage
from app.keys.models import ApiKey
from app.webhooks.models import WebhookAttempt, WebhookDelivery

__all__ = [
    "ApiKey",
    "Base",
    "BudgetPeriod",
    "Charge",
    "IdempotencyKey",
    "ImageLink",
    "Job",
    "JobImage",
    "Price",
    "WebhookAttempt",
    "WebhookDelivery",
]

"""Every table, imported in one place: where the session factory is built (app/core/db.py)
and by Alembic, so relationships and foreign keys across domains always resolve."""

from app.billing.models import BudgetPeriod, Charge, Price, UsageHour, UsageRollupState
from app.core.orm import Base
from app.jobs.models import IdempotencyKey, ImageLink, Job, JobImage
from app.keys.models import ApiKey, RateWindow
from app.upstream.models import UpstreamGate
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
    "RateWindow",
    "UpstreamGate",
    "UsageHour",
    "UsageRollupState",
    "WebhookAttempt",
    "WebhookDelivery",
]

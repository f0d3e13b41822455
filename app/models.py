"""Every table, imported in one place: where the session factory is built (app/core/db.py)
and by Alembic, so relationships and foreign keys across domains always resolve."""

from app.billing.models import BudgetPeriod, Charge, LedgerHour, Price, UsageHour, UsageRollupState
from app.core.orm import Base
from app.dashboard.models import AdminSession, JobThumbnail, LoginFailure
from app.jobs.models import IdempotencyKey, ImageLink, Job, JobAttempt, JobImage
from app.keys.models import ApiKey, RateWindow
from app.upstream.models import UpstreamGate
from app.webhooks.models import WebhookAttempt, WebhookDelivery

__all__ = [
    "AdminSession",
    "ApiKey",
    "Base",
    "BudgetPeriod",
    "Charge",
    "IdempotencyKey",
    "ImageLink",
    "Job",
    "JobAttempt",
    "JobImage",
    "JobThumbnail",
    "LedgerHour",
    "LoginFailure",
    "Price",
    "RateWindow",
    "UpstreamGate",
    "UsageHour",
    "UsageRollupState",
    "WebhookAttempt",
    "WebhookDelivery",
]

"""API keys as admins see them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.money import MAX_BUDGET_NANOS, format_usd, parse_usd
from app.core.text import Text
from app.keys.models import ApiKey

Limit = Annotated[int, Field(ge=1, le=1_000_000)]


def _budget(value: str | int | float | None) -> int | None:
    if value is None:
        return None
    nanos = parse_usd(str(value), maximum_nanos=MAX_BUDGET_NANOS)
    if nanos <= 0:
        raise ValueError("must be more than 0 (omit it, or send null, for no budget)")
    return nanos


# JSON is taken strictly, as for jobs: 0 is not false, "5" is not a number.
STRICT = ConfigDict(extra="forbid", strict=True)


class KeyCreate(BaseModel):
    model_config = STRICT

    name: Text = Field(min_length=1, max_length=200)
    admin: bool = False
    budget_usd: str | int | float | None = Field(
        default=None,
        description='decimal USD, e.g. "25" or "0.01", at most 1000000000; none for no budget',
    )
    budget_period: Literal["month", "total"] = "month"
    rate_limit_per_minute: Limit | None = Field(default=None, description="job submissions")
    max_concurrent_jobs: Limit | None = Field(default=None, description="queued or running")

    @field_validator("budget_usd")
    @classmethod
    def _check_budget(cls, value: str | int | float | None) -> str | int | float | None:
        _budget(value)
        return value

    @property
    def budget_nanos(self) -> int | None:
        return _budget(self.budget_usd)


class KeyUpdate(BaseModel):
    """Only the fields sent change; ``"budget_usd": null`` removes the budget."""

    model_config = STRICT

    name: Text | None = Field(default=None, min_length=1, max_length=200)
    budget_usd: str | int | float | None = None
    budget_period: Literal["month", "total"] | None = None
    rate_limit_per_minute: Limit | None = None
    max_concurrent_jobs: Limit | None = None

    @field_validator("budget_usd")
    @classmethod
    def _check_budget(cls, value: str | int | float | None) -> str | int | float | None:
        _budget(value)
        return value

    def changes(self) -> dict[str, object]:
        sent = self.model_dump(exclude_unset=True)
        changes: dict[str, object] = {}
        if sent.get("name") is not None:
            changes["name"] = sent["name"]
        if "budget_usd" in sent:
            changes["budget_nanos"] = _budget(sent["budget_usd"])
        if sent.get("budget_period") is not None:
            changes["budget_period"] = sent["budget_period"]
        for limit in ("rate_limit_per_minute", "max_concurrent_jobs"):
            if limit in sent:  # null removes the limit
                changes[limit] = sent[limit]
        return changes


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    prefix: str = Field(description="the first characters of the key, to recognise it")
    admin: bool
    budget_usd: str | None
    budget_period: Literal["month", "total"]
    budget_used_usd: str = Field(description="held by unfinished jobs + charged, this period")
    rate_limit_per_minute: int | None
    max_concurrent_jobs: int | None
    active_jobs: int = Field(description="jobs queued or running now")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="shown once; only a hash is stored")
    webhook_secret: str = Field(description="shown once; signs this key's webhooks")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
    next_cursor: None = None


class WebhookSecretRotate(BaseModel):
    model_config = STRICT

    grace_seconds: int | None = Field(
        default=None,
        ge=0,
        le=30 * 24 * 3600,
        description="how long the old secret keeps signing too (default "
        "FLUXGATE_WEBHOOK_SECRET_GRACE_SECONDS, 24 h)",
    )


class WebhookSecretRotated(BaseModel):
    id: str
    webhook_secret: str = Field(description="shown once; signs this key's webhooks from now on")
    previous_secret_expires_at: datetime = Field(
        description="until then, deliveries carry the old secret's signature as well"
    )


def key_out(api_key: ApiKey, *, budget_used_nanos: int, active_jobs: int) -> KeyOut:
    return KeyOut(
        id=api_key.id,
        name=api_key.name,
        prefix=api_key.display_prefix,
        admin=api_key.is_admin,
        budget_usd=None if api_key.budget_nanos is None else format_usd(api_key.budget_nanos),
        budget_period="total" if api_key.budget_period == "total" else "month",
        budget_used_usd=format_usd(budget_used_nanos),
        rate_limit_per_minute=api_key.rate_limit_per_minute,
        max_concurrent_jobs=api_key.max_concurrent_jobs,
        active_jobs=active_jobs,
        created_at=api_key.created_at,
        revoked_at=api_key.revoked_at,
    )

"""``/v1/admin/keys``: create (key and webhook secret shown once), list, update, revoke,
rotate the webhook secret."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.billing import budgets
from app.core.db import utcnow
from app.core.errors import error_responses
from app.core.money import format_usd
from app.http.body import StrictJSONRoute
from app.http.deps import AdminKeyDep, SessionDep, SettingsDep
from app.keys import service
from app.keys.models import ApiKey
from app.keys.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyUpdate,
    WebhookSecretRotate,
    WebhookSecretRotated,
)

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], route_class=StrictJSONRoute)


def key_out(session: Session, api_key: ApiKey) -> KeyOut:
    period = budgets.current_period(session, api_key=api_key, at=utcnow())
    used = 0 if period is None else period.held_nanos + period.charged_nanos
    return KeyOut(
        id=api_key.id,
        name=api_key.name,
        prefix=api_key.display_prefix,
        admin=api_key.is_admin,
        budget_usd=None if api_key.budget_nanos is None else format_usd(api_key.budget_nanos),
        budget_period="total" if api_key.budget_period == "total" else "month",
        budget_used_usd=format_usd(used),
        rate_limit_per_minute=api_key.rate_limit_per_minute,
        max_concurrent_jobs=api_key.max_concurrent_jobs,
        active_jobs=api_key.active_jobs,
        created_at=api_key.created_at,
        revoked_at=api_key.revoked_at,
    )


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key")
def create_key(body: KeyCreate, _admin: AdminKeyDep, session: SessionDep) -> KeyCreated:
    created = service.create_key_as(session, spec=body)
    shown = key_out(session, created.api_key)
    return KeyCreated(
        **shown.model_dump(), key=created.key, webhook_secret=created.api_key.webhook_secret
    )


@router.get("", response_model=KeyList, summary="List API keys")
def list_keys(_admin: AdminKeyDep, session: SessionDep) -> KeyList:
    return KeyList(data=[key_out(session, key) for key in service.list_keys(session)])


@router.get("/{key_id}", response_model=KeyOut, summary="Get an API key")
def get_key(key_id: str, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    return key_out(session, service.get_key(session, key_id=key_id))


@router.patch("/{key_id}", response_model=KeyOut, summary="Change a key's name or budget")
def update_key(key_id: str, body: KeyUpdate, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    api_key = service.update_key(session, key_id=key_id, changes=body.changes())
    return key_out(session, api_key)


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    summary="Revoke an API key (not the last active admin key)",
    responses=error_responses(409),
)
def revoke_key(key_id: str, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    api_key = service.revoke_key(session, key_id=key_id)
    return key_out(session, api_key)


@router.post(
    "/{key_id}/webhook-secret",
    response_model=WebhookSecretRotated,
    summary="Rotate a key's webhook secret (the old one signs too during a grace period)",
)
def rotate_webhook_secret(
    key_id: str,
    _admin: AdminKeyDep,
    session: SessionDep,
    settings: SettingsDep,
    body: WebhookSecretRotate | None = None,
) -> WebhookSecretRotated:
    grace = body.grace_seconds if body is not None else None
    if grace is None:
        grace = settings.webhook_secret_grace_seconds
    api_key = service.rotate_webhook_secret(session, key_id=key_id, grace_seconds=grace)
    assert api_key.previous_webhook_secret_expires_at is not None
    return WebhookSecretRotated(
        id=api_key.id,
        webhook_secret=api_key.webhook_secret,
        previous_secret_expires_at=api_key.previous_webhook_secret_expires_at,
    )

"""``/v1/admin/keys``: create (key and webhook secret shown once), list, update, revoke,
rotate the webhook secret."""

from __future__ import annotations

from fastapi import APIRouter

from app.core.errors import error_responses
from app.http.body import StrictJSONRoute
from app.http.deps import SessionDep, SettingsDep
from app.keys import service
from app.keys.deps import AdminKeyDep
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


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key")
def create_key(body: KeyCreate, _admin: AdminKeyDep, session: SessionDep) -> KeyCreated:
    created = service.create_key_as(session, spec=body)
    shown = service.to_key_out(session, created.api_key)
    return KeyCreated(
        **shown.model_dump(), key=created.key, webhook_secret=created.api_key.webhook_secret
    )


@router.get("", response_model=KeyList, summary="List API keys")
def list_keys(_admin: AdminKeyDep, session: SessionDep) -> KeyList:
    return KeyList(data=service.to_keys_out(session, service.list_keys(session)))


@router.get("/{key_id}", response_model=KeyOut, summary="Get an API key")
def get_key(key_id: str, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    return service.to_key_out(session, service.get_key(session, key_id=key_id))


@router.patch("/{key_id}", response_model=KeyOut, summary="Change a key's name or budget")
def update_key(key_id: str, body: KeyUpdate, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    api_key = service.update_key(session, key_id=key_id, changes=body.changes())
    return service.to_key_out(session, api_key)


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    summary="Revoke an API key (not the last active admin key)",
    responses=error_responses(409),
)
def revoke_key(key_id: str, _admin: AdminKeyDep, session: SessionDep) -> KeyOut:
    api_key = service.revoke_key(session, key_id=key_id)
    return service.to_key_out(session, api_key)


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

"""API keys: creation and authentication. Only a SHA-256 hash of a key is ever stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased

from app.billing import budgets
from app.core.db import rows_affected
from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.ids import new_id
from app.core.orm import utcnow
from app.jobs import accounting
from app.keys.models import ApiKey
from app.keys.schemas import KeyCreate, KeyOut, key_out

KEY_PREFIX = "fgk_"
DISPLAY_PREFIX_CHARS = 12


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    # Standard Webhooks format: "whsec_" + base64 of the raw secret.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    key: str  # shown once, never stored


def create_key(
    session: Session,
    *,
    name: str,
    is_admin: bool = False,
    budget_nanos: int | None = None,
    budget_period: str = "month",
    rate_limit_per_minute: int | None = None,
    max_concurrent_jobs: int | None = None,
) -> CreatedKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(
        id=new_id("key"),
        name=name,
        key_hash=hash_key(key),
        display_prefix=key[:DISPLAY_PREFIX_CHARS],
        is_admin=is_admin,
        webhook_secret=new_webhook_secret(),
        budget_nanos=budget_nanos,
        budget_period=budget_period,
        rate_limit_per_minute=rate_limit_per_minute,
        max_concurrent_jobs=max_concurrent_jobs,
    )
    session.add(api_key)
    session.flush()
    return CreatedKey(api_key=api_key, key=key)


def create_key_as(session: Session, *, spec: KeyCreate) -> CreatedKey:
    """A key as an admin asked for it (API or command line, through the same schema)."""
    return create_key(
        session,
        name=spec.name,
        is_admin=spec.admin,
        budget_nanos=spec.budget_nanos,
        budget_period=spec.budget_period,
        rate_limit_per_minute=spec.rate_limit_per_minute,
        max_concurrent_jobs=spec.max_concurrent_jobs,
    )


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "the API key is not valid or has been revoked", headers={"WWW-Authenticate": "Bearer"}
        )


def authenticate(session: Session, *, presented: str) -> ApiKey | None:
    """The live key matching ``presented``, or ``None``."""
    if not presented.startswith(KEY_PREFIX):
        return None
    digest = hash_key(presented)
    api_key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if api_key is None or api_key.revoked_at is not None:
        return None
    # The lookup is by hash already; compare again in constant time as a second guard.
    if not hmac.compare_digest(api_key.key_hash, digest):
        return None
    return api_key


def live_key(session: Session, *, key_id: str) -> ApiKey:
    """The key as it is now, in this transaction; :class:`InvalidApiKey` once it has been
    revoked. How a submission authenticated from memory (app/keys/known.py) is checked again
    in its own transaction."""
    api_key = session.get(ApiKey, key_id)
    if api_key is None or api_key.revoked_at is not None:
        raise InvalidApiKey()
    return api_key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def get_key(session: Session, *, key_id: str) -> ApiKey:
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise NotFound(f"no API key {key_id}", code="key_not_found", param="id")
    return api_key


def update_key(session: Session, *, key_id: str, changes: dict[str, object]) -> ApiKey:
    """Apply the given fields (name, budget, limits); others stay."""
    api_key = get_key(session, key_id=key_id)
    for field, value in changes.items():
        setattr(api_key, field, value)
    session.flush()
    return api_key


def rotate_webhook_secret(session: Session, *, key_id: str, grace_seconds: int) -> ApiKey:
    """A new secret from now on; the old one keeps signing too for ``grace_seconds``, so
    receivers can switch over without rejecting a delivery."""
    api_key = get_key(session, key_id=key_id)
    api_key.previous_webhook_secret = api_key.webhook_secret
    api_key.previous_webhook_secret_expires_at = utcnow() + timedelta(seconds=grace_seconds)
    api_key.webhook_secret = new_webhook_secret()
    session.flush()
    return api_key


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    """From the next request on, the key is refused (a submission authenticated from memory
    reads the key again: :func:`live_key`). The last active admin key cannot be revoked
    (409): nobody could manage keys any more."""
    api_key = get_key(session, key_id=key_id)
    if api_key.revoked_at is not None:
        return api_key
    conditions = [ApiKey.id == key_id, ApiKey.revoked_at.is_(None)]
    if api_key.is_admin:
        # Lock the live admin keys (PostgreSQL), so two admins revoking each other at once
        # take turns; the condition below then sees the first one's revocation.
        session.execute(
            select(ApiKey.id).where(ApiKey.is_admin, ApiKey.revoked_at.is_(None)).with_for_update()
        )
        other = aliased(ApiKey)
        conditions.append(
            exists().where(other.is_admin, other.revoked_at.is_(None), other.id != key_id)
        )
    revoked = session.execute(
        update(ApiKey)
        .where(*conditions)
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.refresh(api_key)
    if rows_affected(revoked) != 1 and api_key.revoked_at is None:
        raise Conflict(
            "this is the last active admin key; create another admin key before revoking it",
            code="last_admin_key",
        )
    return api_key


def to_key_out(session: Session, api_key: ApiKey) -> KeyOut:
    """The key as the API shows it (see :func:`to_keys_out`)."""
    return to_keys_out(session, [api_key])[0]


# Keys read per pair of queries: a statement's parameters are bounded (PostgreSQL 65,535;
# SQLite 32,766 unless built with more), and the budget read takes two a key.
KEYS_PER_READ = 1000


def to_keys_out(session: Session, api_keys: Sequence[ApiKey]) -> list[KeyOut]:
    """The keys as the API shows them, with what each has used of its budget this period and
    its jobs queued or running: two queries a thousand keys."""
    now = utcnow()
    shown: list[KeyOut] = []
    for start in range(0, len(api_keys), KEYS_PER_READ):
        batch = api_keys[start : start + KEYS_PER_READ]
        used = budgets.used_nanos(session, api_keys=batch, at=now)
        active = accounting.active_jobs(session, api_key_ids=[api_key.id for api_key in batch])
        shown.extend(
            key_out(api_key, budget_used_nanos=used[api_key.id], active_jobs=active[api_key.id])
            for api_key in batch
        )
    return shown

"""``Idempotency-Key`` on job submission, with Stripe's semantics.

Per API key and kept 24 hours: the same key with the same request returns the job the first
request made; with another request it is a 422; while the first is still being accepted, a
409. The reservation commits before the job is made, so a concurrent duplicate sees it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import rows_affected
from app.core.errors import Conflict, InvalidParameter
from app.core.orm import utcnow
from app.jobs.models import IdempotencyKey
from app.jobs.service import JobSubmission

KEPT_FOR = timedelta(hours=24)
# A reservation whose request died mid-way may be taken over after this.
RESERVED_FOR = timedelta(seconds=60)
MAX_KEY_CHARS = 255


def check_key(key: str) -> str:
    key = key.strip()
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise InvalidParameter(
            f"Idempotency-Key must be 1..{MAX_KEY_CHARS} printable characters",
            param="Idempotency-Key",
        )
    return key


def fingerprint(submission: JobSubmission) -> str:
    """The same request, whether sent as JSON or multipart: its parameters and its images."""
    request = submission.request.model_dump(mode="json", exclude={"input_images"})
    request["input_images"] = [image.info.sha256 for image in submission.inputs]
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def reserve(session: Session, *, api_key_id: str, key: str, fingerprint: str) -> str | None:
    """Reserve ``key`` for this request, or find what it already stands for.

    Returns ``None`` when the caller should make the job (then :func:`complete` it), or the
    id of the job an earlier identical request made. The caller commits.
    """
    now = utcnow()
    # A key older than 24 hours is forgotten.
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.api_key_id == api_key_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - KEPT_FOR,
        )
    )
    try:
        with session.begin_nested():
            session.add(
                IdempotencyKey(
                    api_key_id=api_key_id,
                    key=key,
                    fingerprint=fingerprint,
                    job_id=None,
                    locked_until=now + RESERVED_FOR,
                    created_at=now,
                )
            )
        return None
    except IntegrityError:
        pass  # someone has the key: find out what it stands for
    existing = session.get_one(IdempotencyKey, (api_key_id, key), populate_existing=True)
    if existing.fingerprint != fingerprint:
        raise InvalidParameter(
            "this Idempotency-Key was used with a different request",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    if existing.job_id is not None:
        return existing.job_id
    taken_over = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.api_key_id == api_key_id,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id.is_(None),
            IdempotencyKey.locked_until < now,
        )
        .values(locked_until=now + RESERVED_FOR)
    )
    if rows_affected(taken_over) == 1:
        return None
    raise Conflict(
        "a request with this Idempotency-Key is still being accepted; retry in a moment",
        code="idempotency_key_in_use",
        param="Idempotency-Key",
    )


def complete(session: Session, *, api_key_id: str, key: str, job_id: str) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
        .values(job_id=job_id)
    )


def release(session: Session, *, api_key_id: str, key: str) -> None:
    """The request failed before making a job: free the key for a retry."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.api_key_id == api_key_id,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id.is_(None),
        )
    )


def purge_expired(session: Session, *, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` keys older than 24 hours (beat's purge); how many."""
    due = (
        select(IdempotencyKey.api_key_id, IdempotencyKey.key)
        .where(IdempotencyKey.created_at < now - KEPT_FOR)
        .limit(limit)
    )
    result = session.execute(
        delete(IdempotencyKey)
        .where(tuple_(IdempotencyKey.api_key_id, IdempotencyKey.key).in_(due))
        .execution_options(synchronize_session=False)
    )
    return rows_affected(result)

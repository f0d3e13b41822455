"""The caller's API key, as dependencies: any key, an admin key, a key within its submission
rate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core import logs
from app.core.db import end_read
from app.core.errors import Forbidden, Unauthorized
from app.core.orm import utcnow
from app.http.deps import SessionDep
from app.keys import limits
from app.keys.known import KnownKeys, Submitter
from app.keys.models import ApiKey
from app.keys.service import InvalidApiKey, authenticate


def _presented(request: Request) -> str:
    """The key the request presents (401 without one)."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer fgk_...'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return presented.strip() if scheme.lower() == "bearer" else ""


def _authenticated(session: Session, presented: str) -> ApiKey:
    """The live key presented (401 if none), its read ended so no connection stays held."""
    api_key = authenticate(session, presented=presented)
    if api_key is None:
        raise InvalidApiKey()
    end_read(session)
    return api_key


def get_api_key(request: Request, session: SessionDep) -> ApiKey:
    api_key = _authenticated(session, _presented(request))
    # From here on the request's log lines (its access line too) carry the key's id.
    logs.bind(key_id=api_key.id)
    return api_key


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_admin(api_key: ApiKeyDep) -> ApiKey:
    if not api_key.is_admin:
        raise Forbidden("this needs an admin key", code="admin_required")
    return api_key


AdminKeyDep = Annotated[ApiKey, Depends(require_admin)]


async def get_submitter(request: Request, session: SessionDep) -> Submitter:
    """The caller, once this submission fits its per-minute limit (else 429). The count is
    kept even if the submission is refused later; a key without a limit counts nothing.

    A key this process authenticated in the last seconds is taken from memory (app/keys/
    known.py): the submission's own transaction reads its row again and refuses it if it has
    been revoked since (:func:`app.keys.service.live_key`), so a submission costs one
    transaction, not two."""
    presented = _presented(request)
    known: KnownKeys = request.app.state.known_keys
    submitter = known.get(presented)
    if submitter is None:
        api_key = await run_in_threadpool(_authenticated, session, presented)
        submitter = known.remember(presented, api_key)
    logs.bind(key_id=submitter.id)
    limit = submitter.rate_limit_per_minute
    if limit is not None:
        counter: limits.RateCounter = request.app.state.backends.rate_counter
        await run_in_threadpool(
            lambda: limits.check_submission_rate(
                counter, key_id=submitter.id, limit=limit, now=utcnow()
            )
        )
    return submitter


SubmitterDep = Annotated[Submitter, Depends(get_submitter)]

"""The caller's API key, as dependencies: any key, an admin key, a key within its submission
rate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app.core import logs
from app.core.db import end_read
from app.core.errors import Forbidden, Unauthorized
from app.core.orm import utcnow
from app.http.deps import SessionDep
from app.keys import limits
from app.keys.models import ApiKey
from app.keys.service import authenticate


def get_api_key(request: Request, session: SessionDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer fgk_...'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    api_key = (
        authenticate(session, presented=presented.strip()) if scheme.lower() == "bearer" else None
    )
    if api_key is None:
        raise Unauthorized(
            "the API key is not valid or has been revoked",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    end_read(session)
    # From here on the request's log lines (its access line too) carry the key's id.
    logs.bind(key_id=api_key.id)
    return api_key


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_admin(api_key: ApiKeyDep) -> ApiKey:
    if not api_key.is_admin:
        raise Forbidden("this needs an admin key", code="admin_required")
    return api_key


AdminKeyDep = Annotated[ApiKey, Depends(require_admin)]


async def get_submitter(request: Request, api_key: ApiKeyDep) -> ApiKey:
    """The caller, once this submission fits its per-minute limit (else 429). The count is
    kept even if the submission is refused later; a key without a limit counts nothing, and
    skips the thread-pool hop the count's blocking I/O needs."""
    if api_key.rate_limit_per_minute is not None:
        counter: limits.RateCounter = request.app.state.backends.rate_counter
        await run_in_threadpool(
            limits.check_submission_rate, counter, api_key=api_key, now=utcnow()
        )
    return api_key


SubmitterDep = Annotated[ApiKey, Depends(get_submitter)]

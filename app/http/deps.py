"""Dependencies shared by the routes: a session per request and the calling API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.db import end_read, session_scope, utcnow
from app.core.errors import Forbidden, Unauthorized
from app.core.settings import Settings, get_settings
from app.jobs.watching import Watch
from app.keys import limits
from app.keys.models import ApiKey
from app.keys.service import authenticate


def get_session() -> Iterator[Session]:
    """The request's unit of work. It commits once the route has returned and its answer has
    been rendered, and rolls back if anything failed before: a request never writes without
    answering with a success, and a route cannot forget to commit."""
    with session_scope() as session:
        yield session


# "function": the commit runs as soon as the answer is rendered, before it is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


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
    return api_key


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_admin(api_key: ApiKeyDep) -> ApiKey:
    if not api_key.is_admin:
        raise Forbidden("this needs an admin key", code="admin_required")
    return api_key


AdminKeyDep = Annotated[ApiKey, Depends(require_admin)]


def get_submitter(api_key: ApiKeyDep, session: SessionDep, settings: SettingsDep) -> ApiKey:
    """The caller, once this submission fits its per-minute limit (else 429)."""
    limits.check_submission_rate(
        session, api_key=api_key, now=utcnow(), redis_url=settings.redis_url
    )
    session.commit()  # the submission counts even if it is refused later
    return api_key


SubmitterDep = Annotated[ApiKey, Depends(get_submitter)]


def get_watch(request: Request) -> Watch:
    watch: Watch = request.app.state.watch
    return watch


WatchDep = Annotated[Watch, Depends(get_watch)]

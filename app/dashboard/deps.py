"""The dashboard's request dependencies: the signed-in session for a page, and the cross-site
checks every state-changing request must pass."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core import logs
from app.core.errors import Forbidden
from app.core.orm import utcnow
from app.core.settings import Settings
from app.dashboard import security, sessions
from app.http.deps import SessionDep, SettingsDep


class LoginRequired(Exception):
    """No live session: the page answers with a way to the login form (main.py)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def session_policy(settings: Settings) -> sessions.SessionPolicy:
    return sessions.SessionPolicy.from_settings(settings)


def session_token(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(security.cookie_name(security.is_secure(request, settings)))


def get_current(request: Request, session: SessionDep, settings: SettingsDep) -> sessions.Current:
    token = session_token(request, settings)
    current = (
        None
        if token is None
        else sessions.current(session, token=token, now=utcnow(), policy=session_policy(settings))
    )
    if current is None:
        # Back to the page after login; a form's target is no page to go back to.
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(request.url.path + query if request.method == "GET" else "/admin")
    logs.bind(key_id=current.api_key.id)  # the request's log lines name the admin acting
    return current


CurrentDep = Annotated[sessions.Current, Depends(get_current)]


async def check_form(
    request: Request, current: CurrentDep, settings: SettingsDep
) -> sessions.Current:
    """A state-changing request from our own page: same origin, and the session's CSRF token
    in the form (``csrf_token``) or, from htmx, in the ``X-CSRF-Token`` header."""
    if not security.same_origin(request, settings):
        raise Forbidden(
            "this form was not sent from the dashboard itself", code="cross_site_request"
        )
    presented = request.headers.get(security.CSRF_HEADER)
    if presented is None:
        field = (await request.form()).get(security.CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if not sessions.csrf_matches(current.admin_session, presented):
        raise Forbidden(
            "the form's security token is missing or stale; reload the page and try again",
            code="csrf_token_invalid",
        )
    return current


FormDep = Annotated[sessions.Current, Depends(check_form)]

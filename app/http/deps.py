"""The request's unit of work and settings, as dependencies every route can take."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.core.settings import Settings


def get_session() -> Iterator[Session]:
    """The request's unit of work. It commits once the route has returned and its answer has
    been rendered, and rolls back if anything failed before: a request never writes without
    answering with a success, and a route cannot forget to commit."""
    with session_scope() as session:
        yield session


# "function": the commit runs as soon as the answer is rendered, before it is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Dependencies without blocking work are async: FastAPI runs a plain ``def`` one in its thread
# pool, a hop that costs more than what it does.
async def get_app_settings(request: Request) -> Settings:
    """The settings the application was created with (``create_app(settings)``)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]

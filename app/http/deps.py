"""The request's unit of work and settings, as dependencies every route can take."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.db import get_sessionmaker
from app.core.settings import Settings


async def get_session() -> AsyncIterator[Session]:
    """The request's unit of work. It commits once the route has returned and its answer has
    been rendered, and rolls back if anything failed before: a request never writes without
    answering with a success, and a route cannot forget to commit.

    Making a session and closing one that holds no connection is no I/O: only a transaction
    still open at the end (a route that wrote and left the commit to us) costs a thread-pool
    hop, where a ``def`` dependency took one to start and one to end every request."""
    session = get_sessionmaker()()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        if session.in_transaction():  # only if the commit or rollback above failed
            await run_in_threadpool(session.close)
        else:
            session.close()


# "function": the commit runs as soon as the answer is rendered, before it is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Dependencies without blocking work are async: FastAPI runs a plain ``def`` one in its thread
# pool, a hop that costs more than what it does.
async def get_app_settings(request: Request) -> Settings:
    """The settings the application was created with (``create_app(settings)``)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]

"""The database: one engine per process, sessions for the edges (the tables' base and column
types are in app/core/orm.py).

Services take a ``Session`` and flush; the edge (an HTTP request, a task, a CLI command)
commits.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app.core import metrics
from app.core.settings import get_settings

logger = logging.getLogger("fluxgate.db")
T = TypeVar("T")


def rows_affected(result: Result[Any]) -> int:
    """Rows matched by an UPDATE: how a conditional update tells whether it won."""
    return cast(CursorResult[Any], result).rowcount


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    kwargs: dict[str, Any] = {
        # An error's message must not carry a statement's values (prompts, secrets) into logs
        # or traces.
        "hide_parameters": True,
        "pool_pre_ping": True,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
    }
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # Dates (usage by day) are UTC days, whatever the server's time zone; a server that
        # does not answer fails a connection attempt in seconds (libpq would wait forever).
        kwargs["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": 5}
    engine = create_engine(url, **kwargs)
    event.listen(engine, "before_cursor_execute", _count_statement)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _count_statement(*_args: Any) -> None:
    metrics.DB_STATEMENTS.inc()


def _watch_pool(engine: Engine) -> None:
    """Connections checked out and the pool's overflow, in the metrics (this process's engine;
    a pool at its limit makes requests wait, then answer 503)."""
    pool = engine.pool
    overflow = getattr(pool, "overflow", None)

    def checked_out(*_args: Any) -> None:
        metrics.DB_CHECKOUTS.inc()
        metrics.DB_POOL_IN_USE.inc()
        if overflow is not None:
            metrics.DB_POOL_OVERFLOW.set(max(0, overflow()))

    def checked_in(*_args: Any) -> None:
        metrics.DB_POOL_IN_USE.dec()
        if overflow is not None:
            metrics.DB_POOL_OVERFLOW.set(max(0, overflow()))

    event.listen(pool, "checkout", checked_out)
    event.listen(pool, "checkin", checked_in)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    settings = get_settings()
    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    _watch_pool(engine)
    return engine


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    # Every table registered where sessions are made, so foreign keys across domains resolve
    # whichever models a process imported first.
    import app.models  # noqa: F401

    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(sessions: Callable[[], Session] | None = None) -> Iterator[Session]:
    """A unit of work for tasks and commands: commit on success, roll back on error."""
    session = (sessions or get_sessionmaker())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def end_read(session: Session) -> None:
    """End a transaction that only read, so a request that waits next (for a thread, its body,
    a job to finish) holds no pooled connection; what it loaded stays usable."""
    session.commit()


# Without a deadline from the caller, give a busy or restarting database this long.
DEFAULT_RETRY_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 2.0


def with_transaction(
    work: Callable[[Session], T],
    *,
    until: float | None = None,
    backoff_seconds: float = 0.2,
    sessions: Callable[[], Session] | None = None,
) -> T:
    """Run ``work`` in a transaction of its own, again while the database is out of reach
    (too many clients, a dropped connection, a restart, SQLite busy, every pooled connection
    taken): for a few seconds, or until ``until`` (a ``time.monotonic()`` deadline), for a
    caller holding something it must not lose, such as an image already paid for upstream.
    ``work`` must be safe to repeat: in the worker it is a conditional update, which changes
    nothing the second time.
    """
    deadline = time.monotonic() + DEFAULT_RETRY_SECONDS if until is None else until
    attempt = 0
    while True:
        attempt += 1
        try:
            with session_scope(sessions) as session:
                return work(session)
        except (OperationalError, PoolTimeout):
            delay = min(MAX_BACKOFF_SECONDS, backoff_seconds * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            if time.monotonic() + delay >= deadline:
                raise
            logger.warning("database unavailable (attempt %d); retrying", attempt)
            time.sleep(delay)

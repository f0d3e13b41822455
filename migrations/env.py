"""Alembic environment: the URL comes from the caller (``fluxgate migrate``) or the settings."""

from __future__ import annotations

from alembic import context
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from app.core.db import make_engine
from app.core.settings import get_settings, normalize_database_url
from app.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return normalize_database_url(url) if url else get_settings().database_url


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite can only ALTER through table copies.
        render_as_batch=sqlite,
        compare_type=True,
        # Run in each migration's own transaction, before its version is committed.
        on_version_apply=[_check_foreign_keys] if sqlite else [],
    )


def _migrate(connection: Connection) -> None:
    _configure(connection)
    if connection.dialect.name != "sqlite":
        with context.begin_transaction():
            context.run_migrations()
        return
    # A batch step copies a table and drops the original: with foreign keys enforced, dropping
    # one that rows refer to (api_keys, jobs) deletes those rows first, and fails once there are
    # any. They are off while the migrations run (set outside any transaction, or SQLite
    # ignores it), and the references are checked instead: before the first migration, so
    # rows already broken refuse them all before any DDL (the driver opens no transaction for
    # DDL, so a migration's DDL before its first write cannot be undone), and after each
    # migration, before its version is committed.
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        _refuse_broken_references(connection, "before migrating")
        connection.commit()  # Alembic then opens its own transaction
        with context.begin_transaction():
            context.run_migrations()
    except BaseException:
        connection.rollback()  # the failed migration's; the pragma is ignored inside one
        raise
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def _refuse_broken_references(connection: Connection, when: str) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise RuntimeError(f"{when}, rows of {tables} refer to rows that are missing")


def _check_foreign_keys(*, ctx: MigrationContext, **_: object) -> None:
    assert ctx.connection is not None
    _refuse_broken_references(ctx.connection, "after this migration")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()

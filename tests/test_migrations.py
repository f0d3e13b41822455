"""The Alembic migrations are the schema: they match the models, go down and up again, and run
on SQLite as well as PostgreSQL (the embedded default uses the same files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import app.models  # noqa: F401  # every table on the metadata
from app.core.db import make_engine
from app.core.migrate import alembic_config
from app.core.orm import Base
from app.core.settings import normalize_database_url
from tests.harness.claims import postgres_database

TABLES = {
    "api_keys",
    "prices",
    "jobs",
    "job_images",
    "charges",
    "image_links",
    "idempotency_keys",
    "budget_periods",
    "rate_windows",
    "upstream_gate",
    "webhook_deliveries",
    "webhook_attempts",
    "job_attempts",
    "admin_sessions",
    "admin_login_failures",
    "job_thumbnails",
    "usage_hours",
    "usage_rollup_state",
    "ledger_hours",
    "alembic_version",
}


def _config(url: str) -> Config:
    return alembic_config(normalize_database_url(url))


def _tables(url: str) -> set[str]:
    engine = make_engine(normalize_database_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _on_this_dialect(dialect: str) -> Any:
    """Leave out of the comparison what the models create on another dialect only (e.g. the
    PostgreSQL trigram index on prompts)."""

    def include(obj: Any, _name: Any, _type: str, _reflected: bool, _compare_to: Any) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)

    return include


def _diff(url: str) -> list[Any]:
    engine = make_engine(normalize_database_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_object": _on_this_dialect(connection.dialect.name),
                },
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _prices(url: str) -> list[tuple[Any, ...]]:
    engine = make_engine(normalize_database_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT model, output_unit_nanos FROM prices ORDER BY model")
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


EXPECTED_PRICES = [
    ("flux-2-dev", 410_000),
    ("flux-2-klein-4b", 287_000),
    ("flux-2-klein-9b", 2_000_000),
]


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fluxgate.db'}"
    else:
        with postgres_database() as url:
            yield url


def test_migrations_match_the_models_and_round_trip(empty_database: str) -> None:
    url = empty_database
    config = _config(url)
    command.upgrade(config, "head")
    assert _tables(url) == TABLES
    assert _diff(url) == []
    assert _prices(url) == EXPECTED_PRICES
    command.downgrade(config, "base")
    assert _tables(url) == {"alembic_version"}
    command.upgrade(config, "head")
    assert _tables(url) == TABLES


def test_images_are_stored_without_a_second_compression() -> None:
    """PNG, JPEG and WebP are compressed already: PostgreSQL stores their bytes as they are
    (EXTERNAL) instead of trying to compress each one again (its default, EXTENDED)."""
    with postgres_database() as url:
        command.upgrade(_config(url), "head")
        with psycopg.connect(url) as connection:
            storage = connection.execute(
                "SELECT attrelid::regclass::text, attstorage FROM pg_attribute"
                " WHERE attname = 'data' AND attrelid IN"
                " ('job_images'::regclass, 'job_thumbnails'::regclass)"
            ).fetchall()
    assert sorted(storage) == [("job_images", "e"), ("job_thumbnails", "e")]

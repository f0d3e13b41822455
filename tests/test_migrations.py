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
from sqlalchemy.orm import Session

import app.models  # noqa: F401  # every table on the metadata
from app.billing.models import Charge
from app.core.db import make_engine
from app.core.migrate import alembic_config
from app.core.orm import Base
from app.core.settings import normalize_database_url
from app.jobs.models import Job, JobImage
from tests.harness.claims import postgres_database
from tests.harness.schema import job_fields, key_row, klein_price_id

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


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(normalize_database_url(url))
    try:
        with engine.connect() as connection:
            return {
                table: int(
                    connection.execute(
                        sa.select(sa.func.count()).select_from(sa.table(table))
                    ).scalar_one()
                )
                for table in ("api_keys", "jobs", "job_images", "charges")
            }
    finally:
        engine.dispose()


def test_migrations_down_and_up_keep_jobs_their_images_and_charges(empty_database: str) -> None:
    """On SQLite a migration alters a table by copying it and dropping the original; with
    foreign keys enforced, dropping ``jobs`` (0013, 0014) or ``api_keys`` (0004 - 0007) while
    images, charges or jobs referred to them failed, downgrade and upgrade alike."""
    url = empty_database
    config = _config(url)
    command.upgrade(config, "head")
    engine = make_engine(normalize_database_url(url))
    try:
        with Session(engine) as session, session.begin():
            api_key = key_row("migrated")
            session.add(api_key)
            session.flush()
            price_id = klein_price_id(session)
            job = job_fields(api_key.id, price_id, status="succeeded", charged_nanos=1)
            session.execute(sa.insert(Job), [job])
            session.add(
                JobImage(
                    job_id=job["id"],
                    role="output",
                    position=0,
                    content_type="image/png",
                    width=256,
                    height=256,
                    size_bytes=4,
                    sha256="0" * 64,
                    data=b"\x89PNG",
                )
            )
            session.add(
                Charge(
                    job_id=job["id"],
                    api_key_id=api_key.id,
                    model=job["model"],
                    price_id=price_id,
                    amount_nanos=1,
                )
            )
    finally:
        engine.dispose()
    kept = {"api_keys": 1, "jobs": 1, "job_images": 1, "charges": 1}
    assert _counts(url) == kept
    command.downgrade(config, "0003")
    assert _counts(url) == kept
    command.upgrade(config, "head")
    assert _counts(url) == kept


def test_sqlite_migrations_are_refused_while_a_row_points_at_nothing(tmp_path: Path) -> None:
    """Foreign keys are off while SQLite's migrations copy tables (the test above says why), so
    the references are checked: before the first migration, and after each one before its
    version is committed. While a row refers to a missing one, the migrations are refused
    before any DDL, the version stays, and the connection they ran on enforces foreign keys
    again; once the row is gone, they run."""
    url = f"sqlite:///{tmp_path / 'fluxgate.db'}"
    command.upgrade(_config(url), "0016")
    engine = make_engine(normalize_database_url(url))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.execute(
                sa.text(
                    "INSERT INTO job_attempts (job_id, number, ended_at, outcome)"
                    " VALUES ('job_gone', 1, '2026-11-30 00:00:00', 'succeeded')"
                )
            )
            connection.commit()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()  # no transaction left open: Alembic opens its own, as in a deploy
            config = _config(url)
            config.attributes["connection"] = connection
            with pytest.raises(
                RuntimeError, match=r"before migrating, rows of \['job_attempts'\] refer to rows"
            ):
                command.upgrade(config, "head")
            revision = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert revision.scalar_one() == "0016"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            connection.execute(sa.text("DELETE FROM job_attempts WHERE job_id = 'job_gone'"))
            connection.commit()
            command.upgrade(config, "head")
            revision = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert revision.scalar_one() == "0017"
    finally:
        engine.dispose()

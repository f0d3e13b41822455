"""Databases built by the migrations, for tests of single statements: an engine on one, a
queued job's columns, and what the planners make of a statement."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from app.billing.models import Price
from app.core.db import make_engine
from app.core.ids import new_id
from app.core.migrate import upgrade_to_head
from app.core.settings import normalize_database_url
from app.jobs.models import JobStatus
from app.keys.models import ApiKey
from tests.harness.claims import postgres_database

QUEUED = JobStatus.QUEUED.value


@contextmanager
def database_url(
    backend: str, folder: Path | None = None, *, prefix: str = "fluxgate_test"
) -> Iterator[str]:
    """The SQLAlchemy URL of a new empty database: ``postgres`` (a new database ``<prefix>_
    <hex>``, dropped afterwards) or ``sqlite`` (a file in ``folder``, else in a temporary
    folder)."""
    if backend == "postgres":
        with postgres_database(prefix=prefix) as url:
            yield normalize_database_url(url)
        return
    if folder is not None:
        yield f"sqlite:///{folder / 'migrated.db'}"
        return
    with tempfile.TemporaryDirectory(prefix="fluxgate-bench-") as temporary:
        yield f"sqlite:///{temporary}/bench.db"


@contextmanager
def migrated_engine(
    backend: str, folder: Path | None = None, *, prefix: str = "fluxgate_test"
) -> Iterator[Engine]:
    """An engine on a new database (:func:`database_url`) built by the migrations."""
    with database_url(backend, folder, prefix=prefix) as url:
        upgrade_to_head(url)
        built = make_engine(url)
        try:
            yield built
        finally:
            built.dispose()


def klein_price_id(session: Session) -> int:
    return session.scalars(select(Price.id).where(Price.model == "flux-2-klein-4b")).one()


def key_fields(name: str, **values: Any) -> dict[str, Any]:
    """A key's columns, to add straight to the database (no key to present: its hash is made
    up), ``values`` over them."""
    return {
        "id": new_id("key"),
        "name": name,
        "key_hash": new_id("hash"),
        "display_prefix": "fgk_test",
        "is_admin": False,
        "webhook_secret": "whsec_test",
        **values,
    }


def key_row(name: str, **values: Any) -> ApiKey:
    """:func:`key_fields` as a row to add to a session."""
    return ApiKey(**key_fields(name, **values))


def job_fields(key_id: str, price_id: int, **values: Any) -> dict[str, Any]:
    """A queued 256x256 klein job's columns, ``values`` over them."""
    return {
        "id": new_id("job"),
        "api_key_id": key_id,
        "status": QUEUED,
        "model": "flux-2-klein-4b",
        "prompt": "waiting",
        "width": 256,
        "height": 256,
        "steps": 4,
        "price_id": price_id,
        "estimated_nanos": 1,
        "input_tiles": 0,
        "output_tiles": 1,
        **values,
    }


def statements(engine: Engine) -> tuple[list[tuple[str, Any]], Any]:
    """The statements the engine runs while recording, and the listener to remove."""
    seen: list[tuple[str, Any]] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    return seen, record


def plan_postgresql(
    engine: Engine, statement: str, parameters: Any, *, analyze: bool = False
) -> list[dict[str, Any]]:
    """Every node of the statement's plan; with ``analyze``, as run (rows read included)."""
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    with engine.connect() as connection:
        raw = connection.exec_driver_sql(f"EXPLAIN ({options}) {statement}", parameters).scalar()
        connection.rollback()
    assert raw is not None, statement
    root = raw if isinstance(raw, list) else json.loads(raw)
    nodes, todo = [], [root[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo += node.get("Plans", [])
    return nodes


def plan_sqlite(engine: Engine, statement: str, parameters: Any) -> list[str]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return [row[-1] for row in rows]

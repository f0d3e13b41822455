"""Running the Alembic migrations: a deploy step (``fluxgate migrate``), never ``create_all``;
and whether a database is at the revision this code needs (``/readyz``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


@dataclass(frozen=True)
class Schema:
    """The revisions this code was shipped with: the head it needs, and every one it knows."""

    head: str
    known: frozenset[str]


@lru_cache(maxsize=1)
def expected_schema() -> Schema:
    """Read from the migration files once per process."""
    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    assert head is not None, "no migrations"
    return Schema(head=head, known=frozenset(rev.revision for rev in script.walk_revisions()))


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, in one query; ``None`` if it was never migrated."""
    try:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        connection.rollback()
        if inspect(connection).has_table("alembic_version"):
            raise  # not a missing table: the database is in trouble
        return None

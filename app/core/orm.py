"""What every table is built on: one declarative base (with the naming convention the migrations
use) and datetimes that are always UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from sqlalchemy import DateTime, Insert, MetaData, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """The model's table, for a plain INSERT where the ORM's unit of work would cost more than
    the statement (``__table__`` is typed as any FROM clause)."""
    table = model.__table__
    assert isinstance(table, Table), model
    return table


@cache
def insert_into(model: type[Base]) -> Insert:
    """A plain INSERT into the model's table, built once per model."""
    return insert(table_of(model))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a ValueError for a naive time, or one that UTC cannot hold (a time
    zone pushing it past year 1 or 9999)."""
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-12-01T00:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


def utcnow() -> datetime:
    return datetime.now(UTC)

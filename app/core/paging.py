"""Cursor paging, newest first, over tables keyed by public ids (which sort by creation time):
the cursor is the last id of the previous page."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.core.errors import InvalidParameter
from app.core.ids import ID_CHARS

MAX_PAGE_SIZE = 100


class HasId(Protocol):
    id: Any


Row = TypeVar("Row", bound=HasId)


def newest_first(
    session: Session,
    query: Select[Row],
    *,
    id_column: InstrumentedAttribute[str],
    prefix: str,
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """One page of ``query`` and the cursor of the next (``None`` on the last page)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidParameter(f"limit must be 1..{MAX_PAGE_SIZE}", param="limit")
    if cursor is not None:
        if not (cursor.startswith(f"{prefix}_") and len(cursor) == len(prefix) + 1 + ID_CHARS):
            raise InvalidParameter("cursor is not a cursor this API returned", param="cursor")
        query = query.where(id_column < cursor)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor

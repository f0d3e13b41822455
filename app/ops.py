"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.db import get_engine
from app.errors import DependencyUnavailable
from worker.dispatch import check_broker

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database and the broker answer")
def readyz() -> dict[str, str]:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        raise DependencyUnavailable(
            "the database is not reachable", code="database_unavailable"
        ) from None
    try:
        check_broker(timeout=2)
    except Exception:
        raise DependencyUnavailable(
            "the broker is not reachable", code="broker_unavailable"
        ) from None
    return {"status": "ready", "database": "ok", "broker": "ok"}

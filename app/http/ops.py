"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app.core.db import get_engine
from app.core.errors import DependencyUnavailable, error_responses
from app.core.queue import check_broker
from app.http.body import StrictJSONRoute
from app.http.metrics import exposition

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database and the broker answer", responses=error_responses(503))
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


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API (all its processes) and the backlog",
    response_class=PlainTextResponse,
)
def metrics(request: Request) -> Response:
    text = exposition(request.app.state.settings, *request.app.state.metric_collectors)
    return Response(text, media_type=CONTENT_TYPE_LATEST)

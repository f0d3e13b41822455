"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from app.core.db import get_engine, statements_executed
from app.core.errors import DependencyUnavailable, error_responses
from app.core.queue import check_broker
from app.http.body import StrictJSONRoute

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
    summary="Prometheus metrics of this API process",
    response_class=PlainTextResponse,
)
def metrics(request: Request) -> PlainTextResponse:
    hub = request.app.state.watch.hub
    lines = [
        "# HELP fluxgate_db_statements_total SQL statements this process has sent.",
        "# TYPE fluxgate_db_statements_total counter",
        f"fluxgate_db_statements_total {statements_executed()}",
        "# HELP fluxgate_job_watchers Requests and event streams waiting on jobs now.",
        "# TYPE fluxgate_job_watchers gauge",
        f"fluxgate_job_watchers {hub.watcher_count}",
        "# HELP fluxgate_job_notifications_total Job-change notifications received.",
        "# TYPE fluxgate_job_notifications_total counter",
        f"fluxgate_job_notifications_total {hub.notifications_received}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.core.db import get_engine, statements_executed
from app.core.errors import DependencyUnavailable, error_responses
from app.core.migrate import Schema, current_revision, expected_schema
from app.core.queue import check_broker
from app.http.body import StrictJSONRoute

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers and is at this version's schema; the broker answers",
    responses=error_responses(503),
)
def readyz() -> dict[str, str]:
    try:
        with get_engine().connect() as connection:
            revision = current_revision(connection)
    except Exception:
        raise DependencyUnavailable(
            "the database is not reachable", code="database_unavailable"
        ) from None
    schema = expected_schema()
    if revision != schema.head:
        raise _schema_not_ready(revision, schema)
    try:
        check_broker(timeout=2)
    except Exception:
        raise DependencyUnavailable(
            "the broker is not reachable", code="broker_unavailable"
        ) from None
    return {"status": "ready", "database": "ok", "migrations": "ok", "broker": "ok"}


def _schema_not_ready(revision: str | None, schema: Schema) -> DependencyUnavailable:
    """A deploy that forgot ``fluxgate migrate`` (or runs older code on a newer database)."""
    if revision is None:
        return DependencyUnavailable(
            f"the database has never been migrated; this version needs schema revision "
            f"{schema.head}: run `fluxgate migrate`",
            code="migrations_pending",
        )
    if revision in schema.known:
        return DependencyUnavailable(
            f"the database schema is at revision {revision}; this version needs {schema.head}: "
            "run `fluxgate migrate`",
            code="migrations_pending",
        )
    return DependencyUnavailable(
        f"the database schema is at revision {revision}, which this version does not know (it "
        f"needs {schema.head}): it was migrated by a newer version of Fluxgate",
        code="schema_unknown",
    )


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

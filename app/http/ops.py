"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.core.db import get_engine
from app.core.errors import DependencyUnavailable, NotFound, error_responses
from app.core.migrate import Schema, current_revision, expected_schema
from app.core.queue import check_broker
from app.http.body import StrictJSONRoute
from app.http.metrics import exposition

logger = logging.getLogger("fluxgate.api")

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
    migrations = "ok"
    if revision != schema.head:
        if revision is None or revision in schema.known:
            raise _schema_behind(revision, schema)
        # Migrated by a newer version: the deploy step ran before this version's replicas were
        # replaced. Migrations only add, so this version still works; refusing traffic here
        # would take every old replica out of service at once in a rolling deploy.
        logger.warning(
            "the database schema is at revision %s, newer than this version's %s",
            revision,
            schema.head,
        )
        migrations = f"ahead: revision {revision} (this version's is {schema.head})"
    try:
        check_broker(timeout=2)
    except Exception:
        raise DependencyUnavailable(
            "the broker is not reachable", code="broker_unavailable"
        ) from None
    return {"status": "ready", "database": "ok", "migrations": migrations, "broker": "ok"}


def _schema_behind(revision: str | None, schema: Schema) -> DependencyUnavailable:
    """A deploy that forgot ``fluxgate migrate``."""
    if revision is None:
        return DependencyUnavailable(
            f"the database has never been migrated; this version needs schema revision "
            f"{schema.head}: run `fluxgate migrate`",
            code="migrations_pending",
        )
    return DependencyUnavailable(
        f"the database schema is at revision {revision}; this version needs {schema.head}: "
        "run `fluxgate migrate`",
        code="migrations_pending",
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API (all its processes) and the backlog, unless they "
    "are served on a metrics port of their own (then 404)",
    responses=error_responses(404),
    response_class=PlainTextResponse,
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics
    if registry is None:
        raise NotFound("the metrics are served on FLUXGATE_METRICS_PORT, not on this port")
    return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

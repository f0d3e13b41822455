"""The FastAPI application: routers, and the one place errors become the JSON envelope."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app import backends
from app.billing import routes as billing_routes
from app.core import logs, tracing
from app.core.errors import FluxgateError
from app.core.images import return_freed_pixels_to_the_os
from app.core.notifications import JobWatchHub
from app.core.settings import Settings, get_settings
from app.dashboard import pages as dashboard_pages
from app.dashboard import routes as dashboard_routes
from app.dashboard.deps import LoginRequired
from app.dashboard.rendering import STATIC_DIR
from app.dashboard.security import STATIC_PREFIX, DashboardHeaders
from app.http import docs, ops
from app.http.body import check_path_and_query
from app.http.limits import RequestBodyLimits
from app.http.metrics import RequestMetrics, api_registry
from app.http.request_ids import REQUEST_ID_HEADER, RequestIds
from app.jobs import routes as job_routes
from app.jobs import watching
from app.jobs.backlog import BacklogCollector
from app.keys import routes as key_routes
from app.keys.known import KnownKeys
from app.openai_compat import routes as openai_routes
from app.openai_compat.schemas import OPENAI_PREFIX
from app.openai_compat.service import OPENAI_PARAMS
from app.openapi import openapi_schema
from app.webhooks import routes as webhook_routes

logger = logging.getLogger("fluxgate.api")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
}


_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Every error answer: the contract's envelope, or OpenAI's on its compatible routes (where
    invalid input is a 400, so the official client raises BadRequestError), or a page on the
    dashboard's."""
    # Messages may quote what the client sent: an error answer must always be renderable.
    message = _renderable(message)
    param = None if param is None else _renderable(param)
    if dashboard_pages.is_dashboard(request.url.path):
        return dashboard_pages.error_page(request, status, message, headers=headers)
    if request.url.path.startswith(OPENAI_PREFIX):
        if status == 422:
            status = 400
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, kind),
                "param": OPENAI_PARAMS.get(param, param) if param else None,
                "code": code,
            }
        }
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(
        {"error": {"code": code, "message": message, "param": param}},
        status_code=status,
        headers=headers,
    )


def _renderable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FluxgateError)
    async def fluxgate_error(request: Request, error: FluxgateError) -> Response:
        return error_response(
            request, error.status_code, error.code, error.message, error.param, error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        param = loc[-1] if len(loc) > 1 else None
        detail = str(first.get("msg", "")).removeprefix("Value error, ")
        message = f"{param or 'request'}: {detail}"
        return error_response(request, 422, "invalid_parameter", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return error_response(
            request, error.status_code, code, str(error.detail), headers=error.headers
        )

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, error: LoginRequired) -> Response:
        return dashboard_pages.to_login(request, error.next_path)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # Not our error and nobody to tell: the client left while sending its request.
        logger.info(
            "client disconnected while sending %s %s",
            request.method,
            logs.loggable_path(request.url.path),
        )
        return Response(status_code=400)

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, error: OperationalError) -> Response:
        logger.error("database error: %s", error.__class__.__name__)
        return error_response(request, 503, "database_unavailable", "the database is not reachable")

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, error: redis.RedisError) -> Response:
        logger.error("Redis error: %s", error.__class__.__name__)
        return error_response(
            request,
            503,
            "redis_unavailable",
            "Redis is not reachable; try again shortly",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(PoolTimeout)
    async def database_busy(request: Request, error: PoolTimeout) -> Response:
        logger.error("no database connection free within the pool timeout")
        return error_response(
            request,
            503,
            "database_unavailable",
            "the database is too busy right now; try again shortly",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error")
        # Sent from outside every middleware (Starlette's ServerErrorMiddleware), so without
        # the one that adds the request id to every other answer.
        request_id = logs.current_request_id()
        return error_response(
            request,
            500,
            "internal_error",
            "an unexpected error occurred; it has been logged",
            headers={REQUEST_ID_HEADER: request_id} if request_id else None,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Per process (uvicorn may run several), before anything it traces is made.
    tracing.setup(settings, role="api")
    pieces = backends.connect(settings)
    return_freed_pixels_to_the_os()
    hub = JobWatchHub(
        pieces.notifications,
        read_statuses=watching.read_statuses,
        reconcile_seconds=settings.events_reconcile_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(
        lifespan=lifespan,
        # A path with a trailing slash (or an encoded one: /v1/jobs/%2F) is not another
        # spelling of a route: a 404 in the envelope, not a redirect with an empty body.
        redirect_slashes=False,
        dependencies=[Depends(check_path_and_query)],
        # Served by app/http/docs.py with files from the package: FastAPI's pages use a CDN.
        docs_url=None,
        redoc_url=None,
        title="Fluxgate",
        version="0.1.0",
        description=(
            "A self-hosted gateway with a job queue in front of FLUX.2 on Cloudflare Workers AI. "
            "Authenticate with `Authorization: Bearer fgk_...`. Errors always answer "
            '`{"error": {"code", "message", "param"}}`. Money is a decimal string of USD.'
        ),
    )
    app.state.settings = settings
    app.state.backends = pieces
    app.state.watch = watching.Watch(hub, public_url=settings.public_url)
    app.state.known_keys = KnownKeys()
    # With a metrics port, `fluxgate api` serves them there, and not here.
    app.state.metrics = (
        api_registry(settings, [BacklogCollector()]) if settings.metrics_port is None else None
    )
    install_error_handlers(app)
    app.add_middleware(DashboardHeaders)
    app.add_middleware(
        RequestBodyLimits,
        max_bytes=settings.max_request_bytes,
        timeout_seconds=settings.request_body_timeout_seconds,
    )
    app.add_middleware(RequestMetrics)
    # Added last, so outermost: the id is set before anything else runs and is on every answer.
    app.add_middleware(RequestIds)
    app.include_router(ops.router)
    app.include_router(job_routes.router)
    app.include_router(job_routes.admin_router)
    app.include_router(billing_routes.router)
    app.include_router(billing_routes.admin_router)
    app.include_router(openai_routes.router)
    app.include_router(key_routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(webhook_routes.admin_router)
    app.include_router(dashboard_routes.router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    docs.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    tracing.instrument_app(app)
    return app

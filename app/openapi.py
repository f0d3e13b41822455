"""The OpenAPI description's error answers: every status each operation can return, with the
envelope it returns them in.

Most statuses follow from what an operation depends on, so they are derived here rather than
repeated on every route: a key (401), an admin key (403), the submission limit (429), the
database (503), a path id (404), a body (400, 413, 415, 422). Statuses only a route knows
about (402, 409, 502, ...) it declares itself with :func:`app.core.errors.error_responses`. Any
request can meet the bounds on its head and body (408, 431) and the text rule on its query
(422).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel

from app.core.errors import DESCRIPTIONS, ErrorBody, OpenAIErrorBody
from app.http.deps import get_session
from app.http.request_ids import MAX_REQUEST_ID_LENGTH, REQUEST_ID_HEADER
from app.jobs.schemas import JobCreate
from app.keys.deps import get_api_key, get_submitter, require_admin
from app.openai_compat.schemas import OPENAI_PREFIX, ImagesEdit, ImagesGenerate


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def inferred_statuses(route: RouteContext) -> set[int]:
    # The protocol's bounds on the request head, and the text rule on any query string.
    statuses = {408, 422, 431}
    calls = set(_calls(route.dependant))
    if get_api_key in calls or get_submitter in calls:
        statuses.add(401)
    if require_admin in calls:
        statuses.add(403)
    if get_submitter in calls:
        statuses.add(429)
    if get_session in calls:
        statuses.add(503)
    if route.dependant.path_params:
        statuses.add(404)
    documented_body = "requestBody" in (route.openapi_extra or {})
    if route.body_field is not None or documented_body:
        statuses |= {400, 413, 422}
    if documented_body:  # read by the route itself: JSON or multipart, and nothing else
        statuses.add(415)
    return statuses


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI description: routes, the bodies routes read themselves, every error
    status, the request id on every answer, bearer authentication."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    _add_models(schema, JobCreate, ImagesGenerate, ImagesEdit, ErrorBody, OpenAIErrorBody)
    document_errors(app, schema)
    document_request_ids(schema)
    schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    return schema


def _add_models(schema: dict[str, Any], *models: type[BaseModel]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}


def document_errors(app: FastAPI, schema: dict[str, Any]) -> None:
    """Add every error status to each operation of ``schema`` (FastAPI's own 422, with its
    ``detail`` list, is not what Fluxgate answers: it is replaced)."""
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        path = route.path_format or ""
        envelope = OpenAIErrorBody if path.startswith(OPENAI_PREFIX) else ErrorBody
        for method in route.methods or ():
            operation = schema["paths"][path][method.lower()]
            responses = operation.setdefault("responses", {})
            declared = {int(status) for status in responses if status.isdigit()}
            for status in inferred_statuses(route) | {s for s in declared if s >= 400}:
                if status == 422 and envelope is OpenAIErrorBody:
                    status = 400  # OpenAI's client expects invalid input as a 400
                responses[str(status)] = {
                    "description": DESCRIPTIONS[status],
                    "content": _ref(envelope),
                }
            if envelope is OpenAIErrorBody:
                responses.pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)


REQUEST_ID_RESPONSE_HEADER = {
    "description": "the request's id: the X-Request-ID sent, if it was 1 to 128 characters of "
    "A-Z a-z 0-9 . _ : -, else a new one; in the gateway's log lines for the request",
    "required": True,
    "schema": {"type": "string", "maxLength": MAX_REQUEST_ID_LENGTH},
}


def document_request_ids(schema: dict[str, Any]) -> None:
    """Every answer of every operation carries ``X-Request-ID`` (app/http/request_ids.py)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = REQUEST_ID_RESPONSE_HEADER

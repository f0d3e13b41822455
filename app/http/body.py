"""Reading request bodies with every bound enforced while streaming, never after buffering.

A body larger than the limit is refused as soon as the limit is crossed (413, by
app/http/limits.py:RequestBodyLimits, for every route); multipart bodies stream straight into
Starlette's parser, which spools file parts to disk. JSON, whether
a route reads it here or lets FastAPI read it (:class:`StrictJSONRoute`), goes through
:func:`app.core.text.parse_json`, and multipart text fields are strict UTF-8 held to the same text
rule.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import (
    FluxgateError,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from app.core.text import parse_json, text_problem

MAX_FORM_FIELDS = 32
MAX_FORM_FILES = 8
MAX_TEXT_PART_BYTES = 256 * 1024  # a prompt or a metadata object, never more
# Below this, parsing JSON on the event loop costs less than the hop to a thread.
_INLINE_JSON_BYTES = 64 * 1024


@dataclass
class RequestBody:
    fields: dict[str, Any]
    # File parts in the order sent; a name may repeat only in the ``name[]`` form.
    files: list[tuple[str, bytes]] = field(default_factory=list)
    is_form: bool = False

    @property
    def file_names(self) -> list[str]:
        return [name for name, _ in self.files]


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower-case ("" when there is none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_all(request: Request) -> bytes:
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


async def read_json(raw: bytes) -> Any:
    # Parsing megabytes of base64 is CPU work: keep it off the event loop.
    if len(raw) <= _INLINE_JSON_BYTES:
        return parse_json(raw)
    return await run_in_threadpool(parse_json, raw)


class _InvalidFieldText(Exception):
    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, except that a text field must be UTF-8: Starlette would quietly
    read anything else as Latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        try:
            value = bytes(part.data).decode("utf-8")
        except UnicodeDecodeError:
            raise _InvalidFieldText(part.field_name, "is not valid UTF-8") from None
        problem = text_problem(value)
        if problem is not None:
            raise _InvalidFieldText(part.field_name, problem)
        self.items.append((part.field_name, value))


async def read_body(request: Request, *, max_file_bytes: int) -> RequestBody:
    """The body's fields from JSON or multipart/form-data (text fields and file parts); its
    size and the time to send it are bounded for every route by RequestBodyLimits."""
    content_type = media_type(request)
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            "send application/json or multipart/form-data", code="unsupported_media_type"
        )
    if content_type == "application/json":
        data = await read_json(await _read_all(request))
        if not isinstance(data, dict):
            raise FluxgateError("the body must be a JSON object", code="invalid_json")
        return RequestBody(fields=data)

    parser = _StrictMultiPartParser(
        request.headers,
        request.stream(),
        max_fields=MAX_FORM_FIELDS,
        max_files=MAX_FORM_FILES,
        max_part_size=MAX_TEXT_PART_BYTES,
    )
    try:
        form = await parser.parse()
    except _InvalidFieldText as error:
        raise InvalidParameter(
            f"{error.name} {error.problem}", code="invalid_text", param=error.name
        ) from None
    except MultiPartException as error:
        raise FluxgateError(
            f"malformed multipart body: {error.message}", code="invalid_multipart"
        ) from None
    body = RequestBody(fields={}, is_form=True)
    try:
        for name, value in form.multi_items():
            repeatable = name.endswith("[]") and isinstance(value, UploadFile)
            if name in body.fields or (name in body.file_names and not repeatable):
                raise InvalidParameter(f"{name} given more than once", param=name)
            if isinstance(value, UploadFile):
                if value.size is not None and value.size > max_file_bytes:
                    raise PayloadTooLarge(
                        f"{name} is larger than {max_file_bytes} bytes",
                        code="image_too_large",
                        param=name,
                    )
                body.files.append((name, await value.read()))
            else:
                body.fields[name] = value
    finally:
        await form.close()
    return body


class _ParsedJSONRequest(Request):
    """A request whose JSON body was read by :func:`parse_json` before FastAPI asks for it."""

    parsed_json: Any = None

    async def json(self) -> Any:
        return self.parsed_json


class StrictJSONRoute(APIRoute):
    """The route class of every router: FastAPI's own JSON reading would take duplicate keys,
    lone surrogates, NaN and unbounded nesting. Here a JSON body is parsed strictly first, so
    its errors come out in the contract's envelope before FastAPI sees the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # no body, or one the route reads itself with read_body

        async def strict_handler(request: Request) -> Response:
            content_type = media_type(request)
            if content_type == "application/json" or content_type.endswith("+json"):
                parsed = _ParsedJSONRequest(request.scope, request.receive)
                raw = await parsed.body()
                if raw:
                    parsed.parsed_json = await read_json(raw)
                request = parsed
            return await handler(request)

        return strict_handler


async def check_path_and_query(request: Request) -> None:
    """Every route's dependency: path and query values hold to the text rule too. A path
    value that breaks it cannot name anything (404); a query value is refused by name (422)."""
    for value in request.path_params.values():
        if isinstance(value, str) and text_problem(value) is not None:
            raise NotFound("nothing exists at this path", code="not_found")
    for name, value in request.query_params.multi_items():
        problem = text_problem(name) or text_problem(value)
        if problem is not None:
            raise InvalidParameter(f"{name} {problem}", code="invalid_text", param=name)

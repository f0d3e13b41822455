"""Reading request bodies with a size bound enforced while streaming, never after buffering."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from app.errors import FluxgateError, InvalidParameter, PayloadTooLarge, UnsupportedMediaType

MAX_FORM_FIELDS = 64
MAX_FORM_FILES = 8


async def read_capped(request: Request, *, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"the request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(request: Request, body: bytes) -> Request:
    """A request whose body is the bytes already read, for Starlette's form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_fields(request: Request, *, max_bytes: int) -> tuple[dict[str, Any], bool]:
    """The body's fields from JSON or multipart/form-data, and whether it was a form.

    File parts are reported by name with an :class:`UploadFile` value.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            "send application/json or multipart/form-data", code="unsupported_media_type"
        )
    body = await read_capped(request, max_bytes=max_bytes)
    if content_type == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise FluxgateError("the body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise FluxgateError("the body must be a JSON object", code="invalid_json")
        return data, False

    try:
        form = await _replay(request, body).form(
            max_fields=MAX_FORM_FIELDS, max_files=MAX_FORM_FILES, max_part_size=max_bytes
        )
    except Exception as error:  # Starlette raises its own HTTPException or a parser error
        message = getattr(error, "detail", None) or str(error) or "malformed multipart body"
        raise FluxgateError(
            f"malformed multipart body: {message}", code="invalid_multipart"
        ) from None
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in fields:
            raise InvalidParameter(f"{name} given more than once", param=name)
        fields[name] = value
    return fields, True


def reject_files(fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if isinstance(value, UploadFile):
            if name.startswith("input_image_"):
                raise InvalidParameter(
                    "input images are not available in this version of Fluxgate", param=name
                )
            raise InvalidParameter(f"unexpected file part {name}", param=name)

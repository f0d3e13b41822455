"""Reading request bodies with every bound enforced while streaming, never after buffering.

A body larger than the limit is refused as soon as the limit is crossed (413); multipart
bodies stream straight into Starlette's parser, which spools file parts to disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from app.errors import FluxgateError, InvalidParameter, PayloadTooLarge, UnsupportedMediaType

MAX_FORM_FIELDS = 32
MAX_FORM_FILES = 8
MAX_TEXT_PART_BYTES = 256 * 1024  # a prompt or a metadata object, never more


@dataclass
class RequestBody:
    fields: dict[str, Any]
    # File parts in the order sent; a name may repeat only in the ``name[]`` form.
    files: list[tuple[str, bytes]] = field(default_factory=list)
    is_form: bool = False

    @property
    def file_names(self) -> list[str]:
        return [name for name, _ in self.files]


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds {max_bytes} bytes", code="request_too_large")


def _capped(request: Request, max_bytes: int) -> Request:
    """The same request, whose body stream fails once it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _too_large(max_bytes)
        return message

    return Request(request.scope, receive)


async def _read_all(request: Request) -> bytes:
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FluxgateError("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise FluxgateError("the body must be a JSON object", code="invalid_json")
    return data


async def read_body(request: Request, *, max_bytes: int, max_file_bytes: int) -> RequestBody:
    """The body's fields from JSON or multipart/form-data (text fields and file parts)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            "send application/json or multipart/form-data", code="unsupported_media_type"
        )
    capped = _capped(request, max_bytes)
    if content_type == "application/json":
        raw = await _read_all(capped)
        # Parsing megabytes of base64 is CPU work: keep it off the event loop.
        return RequestBody(fields=await run_in_threadpool(_parse_json, raw))

    try:
        form = await capped.form(
            max_fields=MAX_FORM_FIELDS, max_files=MAX_FORM_FILES, max_part_size=MAX_TEXT_PART_BYTES
        )
    except FluxgateError:
        raise
    except Exception as error:  # Starlette's HTTPException or a parser error
        message = getattr(error, "detail", None) or str(error) or "malformed multipart body"
        raise FluxgateError(
            f"malformed multipart body: {message}", code="invalid_multipart"
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

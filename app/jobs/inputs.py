"""Input images of a job request (editing, multi-reference): found, checked, normalised.

CPU-bound and fed untrusted bytes: the API runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from app.core.errors import (
    DependencyUnavailable,
    FluxgateError,
    InvalidParameter,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from app.core.images import (
    InputImageError,
    InputLimits,
    PreparedInput,
    decode_budget,
    prepare_input_image,
)
from app.core.settings import Settings
from app.http.body import RequestBody
from app.upstream import catalog

_FILE_FIELD = re.compile(r"input_image_([0-3])")
_DATA_URL = re.compile(r"data:image/[a-z]+;base64,", re.IGNORECASE)


def input_limits(settings: Settings) -> InputLimits:
    return InputLimits(
        max_bytes=settings.input_image_max_bytes,
        max_pixels=settings.input_image_max_pixels,
        max_side=settings.input_max_side,
        budget=decode_budget(settings.input_decode_memory_bytes),
    )


def _refusal(error: InputImageError, label: str, param: str) -> FluxgateError:
    message = f"{label} {error}"
    if error.kind == "busy":
        return DependencyUnavailable(
            f"{message}; retry in a moment", code="busy", param=param, headers={"Retry-After": "1"}
        )
    if error.kind == "too_large":
        return PayloadTooLarge(message, code="image_too_large", param=param)
    if error.kind == "unsupported":
        return UnsupportedMediaType(message, code="unsupported_image_type", param=param)
    return InvalidParameter(message, code="invalid_image", param=param)


def _decode_base64(text: str, *, label: str, max_bytes: int) -> bytes:
    text = _DATA_URL.sub("", text, count=1).strip()
    # Refuse by length before decoding anything.
    if len(text) * 3 // 4 > max_bytes + 2:
        raise PayloadTooLarge(
            f"{label} is larger than {max_bytes} bytes",
            code="image_too_large",
            param="input_images",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(
            f"{label} is not valid base64", code="invalid_image", param="input_images"
        ) from None


def collect_input_images(
    body: RequestBody, encoded: Sequence[str] | None, *, limits: InputLimits
) -> list[PreparedInput]:
    """The request's input images in upstream order (``input_image_0`` first)."""
    sources: list[tuple[str, str, bytes]] = []  # (label in messages, param, bytes)
    if body.is_form:
        for name in body.file_names:
            if not _FILE_FIELD.fullmatch(name):
                raise InvalidParameter(
                    f"unexpected file part {name}; send input_image_0..input_image_3",
                    code="unknown_parameter",
                    param=name,
                )
        sources = [(name, name, data) for name, data in sorted(body.files)]
    elif encoded:
        for index, text in enumerate(encoded):
            label = f"input_images[{index}]"
            data = _decode_base64(text, label=label, max_bytes=limits.max_bytes)
            sources.append((label, "input_images", data))
    return prepare_all(sources, limits=limits, param="input_images")


def prepare_all(
    sources: Sequence[tuple[str, str, bytes]], *, limits: InputLimits, param: str
) -> list[PreparedInput]:
    """Check and normalise ``(label, param, bytes)`` sources, at most four of them."""
    if len(sources) > catalog.MAX_INPUT_IMAGES:
        raise InvalidParameter(
            f"at most {catalog.MAX_INPUT_IMAGES} input images", code="too_many_images", param=param
        )
    prepared = []
    for label, source_param, data in sources:
        try:
            prepared.append(prepare_input_image(data, limits=limits))
        except InputImageError as error:
            raise _refusal(error, label, source_param) from None
    return prepared

"""OpenAI's Images API request and response, as the OpenAPI description shows them.

The routes read their bodies themselves (JSON or multipart, as OpenAI's client sends them) and
:func:`app.openai_compat.service.parse_images_request` applies these rules.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.upstream import catalog

# Every route under it answers errors in OpenAI's shape.
OPENAI_PREFIX = "/v1/images/"


class ImagesGenerate(BaseModel):
    prompt: str = Field(description="1..4096 characters, not only whitespace")
    model: str = Field(default=catalog.DEFAULT_MODEL, description="a Fluxgate model id")
    n: int = Field(default=1, ge=1, le=4, description="images, one job each")
    size: str = Field(default="1024x1024", description="WxH (or auto), under the job rules")
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] | None = None
    seed: int | None = Field(default=None, ge=0, le=catalog.MAX_SEED)
    guidance: float | None = Field(default=None, gt=0, le=catalog.MAX_GUIDANCE)
    steps: int | None = Field(default=None, ge=1, le=50, description="flux-2-dev only")
    metadata: dict[str, str] | None = None
    quality: str | None = Field(default=None, description="accepted and ignored")
    style: str | None = Field(default=None, description="accepted and ignored")
    user: str | None = Field(default=None, description="accepted and ignored")
    moderation: str | None = Field(default=None, description="accepted and ignored")
    background: str | None = Field(default=None, description="accepted and ignored")
    stream: Literal[False] | None = Field(default=None, description="not supported")


class ImagesEdit(ImagesGenerate):
    image: list[bytes] = Field(
        description="1..4 PNG, JPEG or WebP reference images (files image or image[])"
    )


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


def request_body(model: type[BaseModel], *media_types: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a body the route reads itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": ref} for media_type in media_types},
        }
    }

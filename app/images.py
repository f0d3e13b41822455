"""Image bytes: sniffing, checking and converting with Pillow. No web or queue imports."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Pillow format name -> MIME type; the only decoders ever enabled when opening.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
CONVERSIONS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class ImageError(ValueError):
    """Bytes that are not a complete PNG, JPEG or WebP image."""


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str


def inspect_image(data: bytes) -> ImageInfo:
    """Identify the format from the bytes themselves and decode fully to catch truncation."""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
            image_format = image.format or ""
            width, height = image.size
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"not a complete PNG, JPEG or WebP image ({error})") from None
    return ImageInfo(
        content_type=FORMATS[image_format],
        width=width,
        height=height,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def convert_image(data: bytes, target: str) -> tuple[bytes, str]:
    """Re-encode to ``png``, ``jpeg`` or ``webp``; returns the bytes and their MIME type."""
    pillow_format = CONVERSIONS[target]
    with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
        image.load()
        if pillow_format == "JPEG" and image.mode not in ("RGB", "L"):
            # JPEG has no alpha: composite on white rather than letting black show through.
            rgba = image.convert("RGBA")
            converted = Image.new("RGB", rgba.size, (255, 255, 255))
            converted.paste(rgba, mask=rgba.getchannel("A"))
        else:
            converted = image.copy()
    out = io.BytesIO()
    options: dict[str, object] = {"quality": 90} if pillow_format in ("JPEG", "WEBP") else {}
    converted.save(out, format=pillow_format, **options)
    return out.getvalue(), FORMATS[pillow_format]

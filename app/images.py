"""Image bytes: sniffing, checking and converting with Pillow. No web or queue imports."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

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
        # JPEG has no alpha: composite on white rather than letting black show through.
        converted = _flatten(image) if pillow_format == "JPEG" else image.copy()
    out = io.BytesIO()
    options: dict[str, object] = {"quality": 90} if pillow_format in ("JPEG", "WEBP") else {}
    converted.save(out, format=pillow_format, **options)
    return out.getvalue(), FORMATS[pillow_format]


# ---- input images (editing and multi-reference) ------------------------------------------

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the magic bytes; ``None`` for anything else."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int
    max_pixels: int
    max_side: int  # forwarded images fit in max_side x max_side


@dataclass(frozen=True)
class PreparedInput:
    """An input image as it will be forwarded: PNG, upright, opaque, within max_side."""

    data: bytes
    info: ImageInfo
    original_format: str
    original_width: int
    original_height: int


class InputImageError(ValueError):
    """Why an input image was refused; ``kind`` picks the HTTP status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "too_large" | "unsupported" | "invalid"


def prepare_input_image(data: bytes, *, limits: InputLimits) -> PreparedInput:
    """Check an untrusted upload and normalise it for the upstream.

    The pixel count is read from the header and checked before any decoding, so a
    decompression bomb costs nothing; only PNG, JPEG and WebP decoders are ever enabled.
    """
    if len(data) > limits.max_bytes:
        raise InputImageError("too_large", f"is {len(data)} bytes; at most {limits.max_bytes}")
    image_format = sniff_format(data)
    if image_format is None:
        raise InputImageError("unsupported", "is not a PNG, JPEG or WebP image")
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InputImageError(
                    "too_large",
                    f"is {width}x{height} = {width * height} pixels; at most {limits.max_pixels}",
                )
            # Chunk structure and checksums (PNG), without decoding pixels.
            image.verify()
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            if image_format == "JPEG":
                # Let the JPEG decoder scale down by up to 8x while decoding: far less memory.
                image.draft("RGB", (limits.max_side, limits.max_side))
            image.load()
            upright = ImageOps.exif_transpose(image)
            opaque = _flatten(upright)
    except InputImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputImageError("invalid", f"is truncated or corrupt ({error})") from None
    except Image.DecompressionBombError:
        raise InputImageError("too_large", "has too many pixels") from None
    if max(opaque.size) > limits.max_side:
        opaque.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    opaque.save(out, format="PNG", compress_level=6)
    encoded = out.getvalue()
    return PreparedInput(
        data=encoded,
        info=ImageInfo(
            content_type="image/png",
            width=opaque.width,
            height=opaque.height,
            size_bytes=len(encoded),
            sha256=hashlib.sha256(encoded).hexdigest(),
        ),
        original_format=image_format,
        original_width=width,
        original_height=height,
    )


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent areas become white (the model sees no alpha channel)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")

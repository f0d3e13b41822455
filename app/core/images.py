"""Image bytes: sniffing, checking and converting with Pillow. No web or queue imports."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Pillow format name -> MIME type; the only decoders ever enabled when opening.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
CONVERSIONS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class ImageError(ValueError):
    """Bytes that are not a complete PNG, JPEG or WebP image; the message says how, as the end
    of a sentence about the image ("is truncated")."""


def unreadable(error: BaseException) -> str:
    """Why Pillow could not read an image, in our words, as the end of a sentence about it.
    Pillow's own messages can carry Python reprs ("cannot identify image file <_io.BytesIO
    object at 0x...>"), which must never reach a job or a client."""
    if isinstance(error, UnidentifiedImageError):
        return "is not a PNG, JPEG or WebP image"
    if isinstance(error, Image.DecompressionBombError):
        return "has too many pixels"
    if isinstance(error, EOFError) or "truncated" in str(error):
        return "is truncated"
    return "is corrupt"


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str


def inspect_image(data: bytes) -> ImageInfo:
    """An image from Workers AI: its format from the bytes themselves, its size from the
    header, and a check that the file is whole, all without decoding its pixels (0.1 ms for a
    512x512 PNG where decoding took 2 ms or more, on every job): a PNG's chunks and their CRCs
    through IEND, a JPEG's end-of-image marker, a WebP's RIFF length. (Uploads, which anyone
    can send, are decoded in full: prepare_input_image.)"""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
            image_format = image.format or ""
            width, height = image.size
            if image_format == "PNG":
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(unreadable(error)) from None
    if not _ends_whole(data, image_format):
        raise ImageError("is truncated")
    return ImageInfo(
        content_type=FORMATS[image_format],
        width=width,
        height=height,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _ends_whole(data: bytes, image_format: str) -> bool:
    if image_format == "JPEG":
        # Entropy-coded data never holds 0xFF 0xD9 (a 0xFF there is followed by 0x00).
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if image_format == "WEBP":
        return int.from_bytes(data[4:8], "little") + 8 == len(data)
    # PNG: verify() read every chunk up to IEND and checked their CRCs; IEND itself is fixed
    # bytes (anything an encoder adds after it does no harm).
    return _PNG_END in data[-1024:]


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


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


def thumbnail(data: bytes, *, side: int) -> bytes:
    """A small WebP that fits ``side`` x ``side`` (aspect kept); drafted from a reduced decode
    where the format allows, so a large image is never decoded whole."""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
            image.draft("RGB", (side * 2, side * 2))
            small = _flatten(image) if image.mode not in ("RGB", "L") else image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(unreadable(error)) from None
    small.thumbnail((side, side))
    out = io.BytesIO()
    small.save(out, format="WEBP", quality=70)
    return out.getvalue()


def in_format(data: bytes, content_type: str, target: str | None) -> tuple[bytes, str]:
    """A stored image as asked for: as it is when ``target`` is ``None`` or its own format,
    else re-encoded; the bytes and their MIME type."""
    if target is None or content_type == f"image/{target}":
        return data, content_type
    return convert_image(data, target)


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


class DecodeBudget:
    """Bytes of decoded pixels this process may hold at once, shared by every request: a
    decode waits for its share, so concurrent uploads cannot add up past the budget."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._used = 0
        self._freed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int, *, wait_seconds: float) -> Iterator[None]:
        if nbytes > self.total_bytes:
            raise InputImageError(
                "too_large",
                f"needs {nbytes // 2**20} MiB to decode, more than this server's decode budget",
            )
        with self._freed:
            if not self._freed.wait_for(
                lambda: self._used + nbytes <= self.total_bytes, timeout=wait_seconds
            ):
                raise InputImageError("busy", "cannot be decoded now: the server is busy")
            self._used += nbytes
        try:
            yield
        finally:
            with self._freed:
                self._used -= nbytes
                self._freed.notify_all()


@lru_cache(maxsize=4)
def decode_budget(total_bytes: int) -> DecodeBudget:
    """The process's budget (one per size asked for: in practice, one)."""
    return DecodeBudget(total_bytes)


def return_freed_pixels_to_the_os() -> None:
    """Have glibc give every allocation of 1 MiB or more its own mapping, unmapped when freed.

    Pillow holds decoded pixels in such blocks. With glibc's default (a threshold that grows
    up to 32 MiB), freed blocks stay in the threads' arenas: a burst of decodes left the API
    at a 1.1 GB peak and 790 MB resident afterwards, against 810 MB and 115 MB with this
    (bench/README.md), so the decode budget bounds the process's memory. Elsewhere than glibc
    (musl, macOS) it does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # <malloc.h>
    mallopt(m_mmap_threshold, 1024 * 1024)


# How long a decode waits for its share of the budget before the request is told to retry.
DECODE_WAIT_SECONDS = 10.0
# Rows handled at once when flattening and shrinking a decoded image.
_STRIP_BYTES = 4 * 1024 * 1024


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory Pillow holds for a decoded ``mode`` image (1, 2 or 4 bytes a pixel)."""
    if mode in ("1", "L", "P"):
        per_pixel = 1
    elif mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4  # RGB is stored as 4 bytes too
    return width * height * per_pixel


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int
    max_pixels: int
    max_side: int  # forwarded images fit in max_side x max_side
    budget: DecodeBudget


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
        self.kind = kind  # "too_large" | "unsupported" | "invalid" | "busy"


def prepare_input_image(data: bytes, *, limits: InputLimits) -> PreparedInput:
    """Check an untrusted upload and normalise it for the upstream.

    The pixel count is read from the header and checked before any decoding, so a
    decompression bomb costs nothing; only PNG, JPEG and WebP decoders are ever enabled.
    Memory is bounded: the decoded pixels are held once (JPEG decodes at a reduced scale),
    within the process's decode budget, and everything after works on a small copy.
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
            needed = decode_cost(image_format, *image.size, image.mode, max_side=limits.max_side)
            with limits.budget.hold(needed, wait_seconds=DECODE_WAIT_SECONDS):
                image.load()
                small = _shrunk_opaque(image, limits.max_side)
            upright = ImageOps.exif_transpose(small)
    except InputImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputImageError("invalid", unreadable(error)) from None
    except Image.DecompressionBombError:
        raise InputImageError("too_large", "has too many pixels") from None
    out = io.BytesIO()
    upright.save(out, format="PNG", compress_level=6)
    encoded = out.getvalue()
    return PreparedInput(
        data=encoded,
        info=ImageInfo(
            content_type="image/png",
            width=upright.width,
            height=upright.height,
            size_bytes=len(encoded),
            sha256=hashlib.sha256(encoded).hexdigest(),
        ),
        original_format=image_format,
        original_width=width,
        original_height=height,
    )


def _reduction(width: int, height: int, max_side: int) -> int:
    """The integer box reduction done first: down to at least twice the target (as Pillow's
    ``reducing_gap`` does), leaving the rest to Lanczos on the small image."""
    return max(1, max(width, height) // (2 * max_side))


# Pillow's WebP decoder holds the frame four times over while decoding (libwebp's canvas,
# the frame as bytes, a copy of them, the image); PNG and JPEG decode straight into the image.
_DECODE_COPIES = {"PNG": 1, "JPEG": 1, "WEBP": 4}


def decode_cost(image_format: str, width: int, height: int, mode: str, *, max_side: int) -> int:
    """Peak bytes of :func:`prepare_input_image` for such an image (measured; see
    bench/README.md): the decoding, the reduced copy and the strips in between."""
    factor = _reduction(width, height, max_side)
    reduced = decoded_bytes(-(-width // factor), -(-height // factor), "RGB")
    decoding = decoded_bytes(width, height, mode) * _DECODE_COPIES[image_format]
    return decoding + reduced + 5 * _STRIP_BYTES


def _shrunk_opaque(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` flattened onto white and fitted into ``max_side`` x ``max_side``, made strip
    by strip so no second full-size copy ever exists. Carries the EXIF orientation."""
    width, height = image.size
    factor = _reduction(width, height, max_side)
    rows = max(factor, _STRIP_BYTES // max(1, 4 * width) // factor * factor)
    reduced = Image.new("RGB", (-(-width // factor), -(-height // factor)), (255, 255, 255))
    for top in range(0, height, rows):
        strip = _flatten(image.crop((0, top, width, min(height, top + rows))))
        reduced.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    if max(reduced.size) > max_side:
        reduced.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    if orientation is not None:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        reduced.info["exif"] = exif.tobytes()
    return reduced


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent areas become white (the model sees no alpha channel)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")

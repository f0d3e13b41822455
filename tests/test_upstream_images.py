"""The worker's check of an image from Workers AI: format and size from the header, and a
file that is whole, without decoding its pixels."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from app.core.images import ImageError, inspect_image


def encoded(image_format: str, width: int = 96, height: int = 64) -> bytes:
    picture = Image.new("RGB", (width, height))
    for x in range(width):  # not one colour: the encoders have data to write
        picture.putpixel((x, x % height), (x * 2 % 256, 40, 200))
    out = io.BytesIO()
    picture.save(out, format=image_format)
    return out.getvalue()


@pytest.mark.parametrize(
    ("image_format", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")],
)
def test_a_whole_image_is_described(image_format: str, content_type: str) -> None:
    data = encoded(image_format)
    info = inspect_image(data)
    assert (info.content_type, info.width, info.height) == (content_type, 96, 64)
    assert (info.size_bytes, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("kept", [0.5, 0.9, -1])
def test_a_truncated_image_is_refused(image_format: str, kept: float) -> None:
    data = encoded(image_format)
    cut = data[:kept] if isinstance(kept, int) else data[: int(len(data) * kept)]
    with pytest.raises(ImageError, match=r"is (truncated|corrupt)"):
        inspect_image(cut)


def test_a_png_with_a_damaged_chunk_is_refused() -> None:
    data = bytearray(encoded("PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # inside the compressed pixels: the chunk's CRC no longer matches
    with pytest.raises(ImageError, match="is corrupt"):
        inspect_image(bytes(data))


def test_something_else_is_no_image() -> None:
    with pytest.raises(ImageError, match="is not a PNG, JPEG or WebP image"):
        inspect_image(b"<html>an error page</html>")

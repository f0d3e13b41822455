"""Image fixtures made on the fly: real pictures and hostile ones."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image, ImageDraw


def picture(width: int, height: int, *, fmt: str = "PNG") -> bytes:
    """A real picture: a gradient with a block in the top-left corner."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    ImageDraw.Draw(image).rectangle((0, 0, width // 4, height // 4), fill=(255, 0, 0))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored as width x height whose EXIF says: display rotated 90 degrees."""
    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def transparent_png(width: int, height: int) -> bytes:
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))  # fully transparent black
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    data = picture(8, 8)
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return (
        data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    )


def solid_png(width: int, height: int) -> bytes:
    """A real image with many pixels and few bytes."""
    out = io.BytesIO()
    Image.new("L", (width, height), 0).save(out, format="PNG", optimize=False)
    return out.getvalue()


def gif(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("P", (width, height)).save(out, format="GIF")
    return out.getvalue()

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


def huge_png(width: int, height: int, *, mode: str = "RGBA") -> bytes:
    """A valid PNG of one colour, built row by row: a few hundred KB for tens of megapixels,
    without ever holding the pixels (the probe's 6320 x 6320 RGBA image)."""
    channels, color_type = {"RGBA": (4, 6), "RGB": (3, 2)}[mode]
    row = b"\x00" + bytes([10, 200, 30, 128][:channels]) * width  # filter 0, then pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )

"""Deterministic stand-in pictures, and probing of uploaded input images (pure Pillow)."""

from __future__ import annotations

import functools
import hashlib
import io
import random
import threading
from collections.abc import Sequence

from PIL import Image, ImageDraw

INPUT_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# Above this many pixels an input is only measured, not decoded: it is rejected for its size anyway.
_DECODE_PIXEL_LIMIT = 40_000_000

_ORIENTATIONS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
)

Colour = tuple[int, int, int]

# Pictures drawn and encoded in this process: the work a cache saves, counted for /__sim/stats.
_renders = 0
_renders_lock = threading.Lock()


def renders() -> int:
    """How many pictures this process has drawn and encoded so far (a repeat that
    :func:`render_png` answers from its memo is not one)."""
    return _renders


def render_png(
    model: str,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    inputs: Sequence[bytes] = (),
) -> bytes:
    """Return a width x height PNG that depends only on the arguments (byte-identical on repeat)."""
    digest = hashlib.sha256()
    # Length-prefix every part so ("ab", "c") and ("a", "bc") hash differently.
    for part in (model, prompt, str(seed), str(width), str(height)):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    for data in inputs:
        digest.update(hashlib.sha256(data).digest())
    return _render(digest.digest(), width, height)


@functools.lru_cache(maxsize=32)
def _render(digest: bytes, width: int, height: int) -> bytes:
    global _renders
    with _renders_lock:
        _renders += 1
    rng = random.Random(digest)

    def colour() -> Colour:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    # Gradients are built at 256x256 and resized: far cheaper than per-pixel work at 1920x1920.
    linear = Image.linear_gradient("L")
    orientation = rng.choice(_ORIENTATIONS)
    if orientation is not None:
        linear = linear.transpose(orientation)
    size = (width, height)
    picture = Image.composite(
        Image.new("RGB", size, colour()),
        Image.new("RGB", size, colour()),
        linear.resize(size, Image.Resampling.BILINEAR),
    )
    glow = Image.radial_gradient("L").resize(size, Image.Resampling.BILINEAR)
    picture = Image.composite(picture, Image.new("RGB", size, colour()), glow)

    draw = ImageDraw.Draw(picture)
    for _ in range(rng.randint(3, 6)):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        box = (x0, y0, x1 + 8, y1 + 8)
        outline = colour()
        match rng.randrange(3):
            case 0:
                draw.ellipse(box, fill=colour(), outline=outline, width=3)
            case 1:
                draw.rectangle(box, fill=colour(), outline=outline, width=3)
            case _:
                points = [(rng.randrange(width), rng.randrange(height)) for _ in range(3)]
                draw.polygon(points, fill=colour(), outline=outline)

    out = io.BytesIO()
    # Speed matters more than size here: the simulator also serves benchmarks.
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def probe_image(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) if `data` is a decodable PNG, JPEG or WebP image, else None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in INPUT_FORMATS:
                return None
            width, height = image.size
            if width * height <= _DECODE_PIXEL_LIMIT:
                image.load()  # truncated or corrupt data only fails here
            return width, height
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None

"""Memory spent on input images is bounded: each decode holds the pixels about once (and as
much as its estimate says, which the process's decode budget relies on), all decodes together
stay within the budget, and quotes, which decode like submissions, are rate-limited like them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness.images import b64, huge_png
from tests.harness.processes import FLUXGATE, ROOT, answers, free_port, wait_until
from tests.harness.stack import Stack
from tests.helpers import assert_error, unique, vm_hwm

MIB = 2**20

# Runs in a fresh interpreter: the peak RSS growth of preparing one image, and the estimate.
MEASURE = """
import resource, sys
from PIL import Image
import app.core.images as images
data = open(sys.argv[1], "rb").read()
limits = images.InputLimits(
    max_bytes=10**9, max_pixels=10**9, max_side=512, budget=images.DecodeBudget(2**40)
)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
images.prepare_input_image(data, limits=limits)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
with Image.open(sys.argv[1]) as image:
    kind = images.sniff_format(data)
    if kind == "JPEG":
        image.draft("RGB", (512, 512))
    estimate = images.decode_cost(kind, *image.size, image.mode, max_side=512)
print(grown, estimate, image.size[0] * image.size[1] * 4)
"""


def write_image(path: Path, kind: str, size: int) -> Path:
    if kind == "png":
        path.write_bytes(huge_png(size, size))
    else:  # WebP and JPEG: few bytes for many pixels too, made in a process of their own
        script = (
            "import sys; from PIL import Image; "
            f"Image.new('RGBA' if '{kind}' == 'webp' else 'RGB', ({size}, {size}), "
            f"(10, 200, 30)).save(sys.argv[1], format='{kind.upper()}')"
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    return path


@pytest.mark.parametrize(("kind", "size"), [("png", 6320), ("webp", 4000), ("jpeg", 6320)])
def test_one_decode_stays_within_its_estimate_and_near_one_copy(
    tmp_path: Path, kind: str, size: int
) -> None:
    """The probe's 155 KB 6320 x 6320 RGBA PNG raised the API's peak RSS by 635 MB: the pixels
    were copied four times over (upright, RGBA, a white canvas, the composite)."""
    path = write_image(tmp_path / f"image.{kind}", kind, size)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    grown, estimate, pixels_once = (int(part) for part in measured.stdout.split())
    assert grown <= estimate + 8 * MIB, (grown // MIB, estimate // MIB)
    if kind == "png":  # decoded straight into the image, then only small copies
        assert grown <= pixels_once * 1.2 + 24 * MIB, (grown // MIB, pixels_once // MIB)


def test_all_decodes_together_stay_within_the_decode_budget(stack: Stack, api_key: str) -> None:
    """The probe: six concurrent quotes with four large images each reached 4 GB."""
    requests = 8
    budget = 128 * MIB
    port = free_port()
    env = {
        **stack.env,
        "FLUXGATE_INPUT_IMAGE_MAX_PIXELS": str(4_000_000),
        "FLUXGATE_INPUT_DECODE_MEMORY_BYTES": str(budget),
        "FLUXGATE_MAX_REQUEST_BYTES": str(16 * MIB),
    }
    api = stack.start("api-budget", [*FLUXGATE, "api", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/healthz"), timeout=20, what="api")
        image = b64(huge_png(1990, 2000))  # 4 MP RGBA: 16 MB decoded, about 52 MB to prepare
        body = json.dumps(
            {"prompt": "memory", "width": 512, "height": 512, "input_images": [image] * 4}
        )
        before = vm_hwm(api.popen.pid)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        with (
            httpx.Client(base_url=url, headers=headers, timeout=60) as client,
            ThreadPoolExecutor(requests) as pool,
        ):
            replies = list(
                pool.map(lambda _: client.post("/v1/quote", content=body), range(requests))
            )
        assert [reply.status_code for reply in replies] == [200] * requests, replies[0].text
        grown = vm_hwm(api.popen.pid) - before
        # Measured here: 112 MB with the budget, 378 MB without it (even with each image's
        # pixels decoded once).
        assert grown <= budget + 16 * MIB, grown // MIB
    finally:
        api.stop()


def test_quotes_are_rate_limited_like_submissions(stack: Stack) -> None:
    key = stack.create_key("quotes", "--rate-limit", "2")
    with stack.client(key) as client:
        body = {"prompt": unique("priced"), "width": 512, "height": 512}
        assert client.post("/v1/quote", json=body).status_code == 200
        assert client.post("/v1/jobs", json=body).status_code == 202
        refused = client.post("/v1/quote", json=body)
        assert_error(refused, 429, "rate_limited", None)
        assert int(refused.headers["Retry-After"]) >= 1

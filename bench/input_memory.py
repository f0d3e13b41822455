"""Memory the API spends decoding input images: its peak RSS (VmHWM) for one 6320 x 6320 RGBA
PNG (155 KB, under the 40-megapixel limit), and for N concurrent requests with four of them
each, both sent to POST /v1/quote (which decodes just as a submission does).

Sets up a PostgreSQL database, an API process with the contract's default image limits and an
API key through the test harness (tests/harness/), and tears everything down afterwards.

    python -m bench.input_memory [--concurrent 6] [--json]

Run it in another checkout (copy bench/ and tests/ there) to measure that code the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/input_memory.py``: ``bench`` and ``tests`` are in the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.harness.images import b64, huge_png
from tests.harness.processes import proc_status_kb
from tests.harness.stack import Stack

MIB = 2**20


def memory(pid: int) -> dict[str, float]:
    """VmHWM and VmRSS of a process, in MiB."""
    return {name: (proc_status_kb(pid, name) or 0) / 1024 for name in ("VmHWM", "VmRSS")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.input_memory", description=__doc__)
    parser.add_argument("--concurrent", type=int, default=6)
    parser.add_argument("--side", type=int, default=6320)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)

    stack = Stack(
        Path(tempfile.mkdtemp(prefix="fluxgate-bench-")),
        backend="postgres",
        # The contract's defaults, not the test stacks' small ones.
        max_request_bytes=str(64 * MIB),
        input_image_max_bytes=str(10 * MIB),
        input_image_max_pixels="40000000",
        log_level="WARNING",
    )
    try:
        api = stack.start_api()
        pid = api.popen.pid
        key = stack.create_key("memory")
        image = b64(huge_png(opts.side, opts.side))
        one = {"prompt": "memory", "width": 512, "height": 512, "input_images": [image]}
        four = {**one, "input_images": [image] * 4}
        results: dict[str, Any] = {
            "image": f"{opts.side}x{opts.side} RGBA PNG, {len(image) * 3 // 4} bytes"
        }
        with stack.client(key) as client:
            client.timeout = httpx.Timeout(300)
            small = {**one, "input_images": [b64(huge_png(64, 64))]}
            assert client.post("/v1/quote", json=small).status_code == 200  # warm up
            results["idle"] = memory(pid)

            started = time.monotonic()
            answer = client.post("/v1/quote", json=one)
            results["one image"] = {
                "status": answer.status_code,
                "seconds": round(time.monotonic() - started, 2),
                **memory(pid),
            }

            def quote(_: int) -> tuple[int, float]:
                began = time.monotonic()
                status = client.post("/v1/quote", json=four).status_code
                return status, time.monotonic() - began

            started = time.monotonic()
            with ThreadPoolExecutor(opts.concurrent) as pool:
                answers = list(pool.map(quote, range(opts.concurrent)))
            results[f"{opts.concurrent} x 4 images at once"] = {
                "statuses": sorted(status for status, _ in answers),
                "seconds (slowest request)": round(max(seconds for _, seconds in answers), 2),
                "seconds (all)": round(time.monotonic() - started, 2),
                **memory(pid),
            }
    finally:
        stack.close()
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        for name, value in results.items():
            print(f"{name:<28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

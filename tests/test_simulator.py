"""End-to-end tests of the Workers AI simulator, run as a subprocess and spoken to over HTTP."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.simulator.server import CACHE_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0k"
KLEIN_4B = "flux-2-klein-4b"
MULTIPART_ONLY = "required properties at '/' are 'multipart'"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(log: Path, *extra: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run a simulator subprocess until the caller is done (``env``: more environment
    variables for it); yield its base URL."""
    port = _free_port()
    command = [sys.executable, "-m", "app.simulator", "--port", str(port), "--token", TOKEN]
    environment = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, *extra], cwd=ROOT, stdout=out, stderr=out, env=environment
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"simulator exited early: {log.read_text()}")
            try:
                if httpx.get(f"{base}/__sim/stats", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"simulator did not answer: {log.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fast simulator with default limits."""
    yield from _start(tmp_path_factory.mktemp("sim") / "log")


@pytest.fixture(scope="module")
def cached_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Pictures drawn once and answered again from the cache."""
    yield from _start(tmp_path_factory.mktemp("cached") / "log", "--cache")


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Half a second of latency and a tiny body limit."""
    log = tmp_path_factory.mktemp("slow") / "log"
    yield from _start(log, "--latency", "0.5", "--max-body-bytes", "4096")


@pytest.fixture(scope="module")
def faulty_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every unscripted request is rate limited; hangs last 1.5 s."""
    log = tmp_path_factory.mktemp("faulty") / "log"
    yield from _start(log, "--faults", "3021@3=1.0", "--hang-seconds", "1.5")


def _url(base: str, model: str = KLEIN_4B) -> str:
    return f"{base}/client/v4/accounts/acc123/ai/run/@cf/black-forest-labs/{model}"


def _run(
    base: str,
    fields: Mapping[str, object],
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
    *,
    model: str = KLEIN_4B,
    token: str = TOKEN,
    timeout: float = 30,
) -> httpx.Response:
    """POST multipart/form-data the way the gateway does: text parts without a filename."""
    parts: dict[str, Any] = {name: (None, str(value)) for name, value in fields.items()}
    parts.update(files or {})
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(_url(base, model), files=parts, headers=headers, timeout=timeout)


def _image(response: httpx.Response) -> tuple[bytes, Image.Image]:
    """Decode a success envelope's picture, checking the envelope on the way."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    data = base64.b64decode(body["result"]["image"], validate=True)
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return data, picture


def _error(response: httpx.Response, status: int, code: int) -> str:
    """Check an error envelope and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["result"] is None
    assert body["success"] is False
    assert body["messages"] == []
    [error] = body["errors"]
    assert error["code"] == code
    message: str = error["message"]
    return message


def _png(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, format=fmt)
    return out.getvalue()


def _script(base: str, prompt: str | None, sequence: list[str]) -> None:
    response = httpx.post(f"{base}/__sim/script", json={"prompt": prompt, "sequence": sequence})
    assert response.status_code == 200, response.text


def test_bad_or_missing_token_is_401(sim: str) -> None:
    response = _run(sim, {"prompt": "auth"}, token="wrong")
    assert _error(response, 401, 10000) == "Authentication error"
    missing = httpx.post(_url(sim), files={"prompt": (None, "auth")})
    assert _error(missing, 401, 10000) == "Authentication error"


def test_json_body_is_rejected_with_the_real_message(sim: str) -> None:
    response = httpx.post(
        _url(sim), json={"prompt": "a cat"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.json() == {
        "result": None,
        "success": False,
        "errors": [{"code": 5004, "message": MULTIPART_ONLY}],
        "messages": [],
    }
    assert response.status_code == 400


def test_urlencoded_body_is_rejected(sim: str) -> None:
    response = httpx.post(
        _url(sim), data={"prompt": "a cat"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert _error(response, 400, 5004) == MULTIPART_ONLY


def test_prompt_only_gives_a_1024x768_png_and_neurons(sim: str) -> None:
    response = _run(sim, {"prompt": "a lighthouse at dusk"})
    data, picture = _image(response)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert picture.format == "PNG"
    assert picture.size == (1024, 768)
    # 4 output tiles x $0.000287 at $0.011 per 1000 neurons.
    assert response.headers["cf-ai-neurons"] == "104.36"
    # Not a flat fill: the picture has structure.
    assert len(picture.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100


def test_output_is_deterministic_in_prompt_and_seed(sim: str) -> None:
    base = {"prompt": "determinism", "seed": 42, "width": 256, "height": 256}
    first, _ = _image(_run(sim, base))
    again, _ = _image(_run(sim, base))
    other_seed, _ = _image(_run(sim, {**base, "seed": 43}))
    other_prompt, _ = _image(_run(sim, {**base, "prompt": "determinism 2"}))
    other_model, _ = _image(_run(sim, base, model="flux-2-klein-9b"))
    assert first == again
    assert len({first, other_seed, other_prompt, other_model}) == 4


def test_without_seed_output_varies(sim: str) -> None:
    fields = {"prompt": "no seed", "width": 256, "height": 256}
    pictures = {_image(_run(sim, fields))[0] for _ in range(3)}
    assert len(pictures) > 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 255}, "Value of '/width' must be >= 256, got 255"),
        ({"width": 1921}, "Value of '/width' must be <= 1920, got 1921"),
        ({"height": 100}, "Value of '/height' must be >= 256, got 100"),
        ({"height": 4096}, "Value of '/height' must be <= 1920, got 4096"),
        ({"width": "wide"}, "Type mismatch of '/width', 'string' not in 'integer'"),
        ({"height": "1.5"}, "Type mismatch of '/height', 'string' not in 'integer'"),
        ({"seed": -1}, "Value of '/seed' must be >= 0, got -1"),
        ({"seed": "x"}, "Type mismatch of '/seed', 'string' not in 'integer'"),
        ({"guidance": "lots"}, "Type mismatch of '/guidance', 'string' not in 'number'"),
        ({"prompt": ""}, "Length of '/prompt' must be >= 1"),
    ],
)
def test_invalid_fields_are_5004(sim: str, fields: dict[str, object], message: str) -> None:
    response = _run(sim, {"prompt": "bounds", **fields})
    assert _error(response, 400, 5004) == message


def test_missing_prompt(sim: str) -> None:
    response = _run(sim, {"width": 512})
    assert _error(response, 400, 5004) == "required properties at '/' are 'prompt'"


def test_size_bounds_accepted_and_multiple_of_16_not_enforced(sim: str) -> None:
    fields = {"prompt": "sizes", "seed": 1, "guidance": "3.5", "whatever": "ignored"}
    _, picture = _image(_run(sim, {**fields, "width": 256, "height": 1920}))
    assert picture.size == (256, 1920)
    _, picture = _image(_run(sim, {**fields, "width": 300, "height": 257}))
    assert picture.size == (300, 257)


@pytest.mark.parametrize("model", ["flux-2-klein-4b", "flux-2-klein-9b"])
def test_steps_refused_on_klein(sim: str, model: str) -> None:
    response = _run(sim, {"prompt": "steps", "steps": 4}, model=model)
    assert _error(response, 400, 5004) == f"steps is not supported for {model}"


def test_steps_on_dev(sim: str) -> None:
    fields = {"prompt": "dev steps", "width": 256, "height": 256}
    response = _run(sim, {**fields, "steps": 10}, model="flux-2-dev")
    _image(response)
    # 1 output tile x $0.00041 x 10 steps.
    assert response.headers["cf-ai-neurons"] == "372.73"
    default = _run(sim, fields, model="flux-2-dev")
    _image(default)
    assert default.headers["cf-ai-neurons"] == "931.82"  # 25 steps by default
    for bad in (0, 51):
        message = _error(_run(sim, {**fields, "steps": bad}, model="flux-2-dev"), 400, 5004)
        assert "'/steps'" in message


def test_klein_9b_neurons_by_megapixel(sim: str) -> None:
    response = _run(sim, {"prompt": "9b", "width": 1920, "height": 1080}, model="flux-2-klein-9b")
    _image(response)
    # 2 started megapixels: $0.015 + $0.002.
    assert response.headers["cf-ai-neurons"] == "1545.45"


def test_unknown_model_is_5007(sim: str) -> None:
    response = _run(sim, {"prompt": "x"}, model="flux-3-mega")
    message = _error(response, 400, 5007)
    assert message == "No such model @cf/black-forest-labs/flux-3-mega or task"


def test_input_images(sim: str) -> None:
    fields = {"prompt": "edit", "seed": 5, "width": 256, "height": 256}
    small = {"input_image_0": ("a.png", _png(512, 512), "image/png")}
    accepted = _run(sim, fields, small)
    edited, _ = _image(accepted)
    # 1 output tile + 1 input tile: $0.000287 + $0.000059.
    assert accepted.headers["cf-ai-neurons"] == "31.45"
    plain, _ = _image(_run(sim, fields))
    assert edited != plain  # the reference image feeds the picture

    for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        ref = {"input_image_3": ("b", _png(100, 80, fmt), mime)}
        _image(_run(sim, fields, ref))

    too_wide = {"input_image_1": ("big.png", _png(513, 100), "image/png")}
    message = _error(_run(sim, fields, too_wide), 400, 5004)
    assert "'/input_image_1'" in message
    assert "513x100" in message
    not_image = {"input_image_2": ("x.png", b"definitely not a picture", "image/png")}
    assert "'/input_image_2'" in _error(_run(sim, fields, not_image), 400, 5004)


def test_body_over_limit_is_413(slow_sim: str) -> None:
    files = {"input_image_0": ("a.png", b"\0" * 8192, "image/png")}
    response = _run(slow_sim, {"prompt": "huge"}, files)
    assert _error(response, 413, 3006) == "Request is too large"

    # Without Content-Length (chunked), the limit applies while reading.
    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=prompt\r\n\r\nhuge\r\n"
        for _ in range(10):
            yield b"x" * 1024

    chunked = httpx.post(
        _url(slow_sim),
        content=chunks(),
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "multipart/form-data; boundary=b",
        },
    )
    assert "content-length" not in chunked.request.headers
    assert _error(chunked, 413, 3006) == "Request is too large"


def test_scripted_sequence_in_order(sim: str) -> None:
    prompt = "scripted sequence"
    _script(sim, prompt, ["3040@1", "500", "nonjson", "badbase64", "ok"])
    fields = {"prompt": prompt, "width": 256, "height": 256}

    first = _run(sim, fields)
    assert _error(first, 429, 3040) == "Capacity temporarily exceeded, please try again."
    assert first.headers["retry-after"] == "1"

    # Another prompt is untouched by this script.
    _image(_run(sim, {**fields, "prompt": "bystander"}))

    second = _run(sim, fields)
    assert second.status_code == 500
    assert second.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        json.loads(second.text)

    third = _run(sim, fields)
    assert third.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(third.text)

    fourth = _run(sim, fields)
    assert fourth.status_code == 200
    assert fourth.json()["success"] is True
    with pytest.raises(binascii.Error):
        base64.b64decode(fourth.json()["result"]["image"])

    _, picture = _image(_run(sim, fields))
    assert picture.size == (256, 256)
    _image(_run(sim, fields))  # exhausted: back to normal


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("3021", 429, 3021),
        ("3036", 429, 3036),
        ("3007", 408, 3007),
        ("3008", 408, 3008),
        ("502", 502, 1031),
        ("503", 503, 1032),
    ],
)
def test_error_faults(sim: str, fault: str, status: int, code: int) -> None:
    prompt = f"fault {fault}"
    _script(sim, prompt, [fault])
    response = _run(sim, {"prompt": prompt, "width": 256, "height": 256})
    assert _error(response, status, code)
    assert "retry-after" not in response.headers


def test_broken_success_faults(sim: str) -> None:
    prompt = "broken successes"
    _script(sim, prompt, ["notimage", "wrongsize"])
    fields = {"prompt": prompt, "width": 512, "height": 384}
    not_image = _run(sim, fields)
    assert not_image.status_code == 200
    data = base64.b64decode(not_image.json()["result"]["image"], validate=True)
    with pytest.raises(OSError, match="cannot identify"):
        Image.open(io.BytesIO(data))
    _, picture = _image(_run(sim, fields))
    assert picture.size != (512, 384)


def test_validation_happens_before_faults_are_consumed(sim: str) -> None:
    prompt = "validated first"
    _script(sim, prompt, ["3040"])
    assert _error(_run(sim, {"prompt": prompt}, token="nope"), 401, 10000)
    assert _error(_run(sim, {"prompt": prompt, "width": 10}), 400, 5004)
    assert _error(_run(sim, {"prompt": prompt, "width": 256, "height": 256}), 429, 3040)


def test_global_script_after_per_prompt_and_delete(sim: str) -> None:
    try:
        _script(sim, None, ["502", "503", "3040"])
        _script(sim, "has own script", ["3036"])
        fields = {"width": 256, "height": 256}
        assert _error(_run(sim, {**fields, "prompt": "has own script"}), 429, 3036)
        assert _error(_run(sim, {**fields, "prompt": "anyone"}), 502, 1031)
        assert _error(_run(sim, {**fields, "prompt": "someone else"}), 503, 1032)
        cleared = httpx.delete(f"{sim}/__sim/script")
        assert cleared.status_code == 200
        _image(_run(sim, {**fields, "prompt": "anyone"}))
    finally:
        httpx.delete(f"{sim}/__sim/script")


def test_bad_script_is_refused(sim: str) -> None:
    for payload in (
        {"prompt": "p", "sequence": ["9999"]},
        {"prompt": "p", "sequence": ["nonjson@3"]},
        {"prompt": 5, "sequence": []},
        {"sequence": ["ok"]},
    ):
        response = httpx.post(f"{sim}/__sim/script", json=payload)
        assert response.status_code == 400, payload


def test_fault_rates_with_retry_after(faulty_sim: str) -> None:
    for _ in range(3):
        response = _run(faulty_sim, {"prompt": "rated", "width": 256, "height": 256})
        assert _error(response, 429, 3021) == "Rate limited"
        assert response.headers["retry-after"] == "3"


def test_hang_outlasts_the_client_timeout(faulty_sim: str) -> None:
    prompt = "hang"
    _script(faulty_sim, prompt, ["hang", "hang"])
    fields = {"prompt": prompt, "width": 256, "height": 256}
    with pytest.raises(httpx.ReadTimeout):
        _run(faulty_sim, fields, timeout=0.5)
    # A patient client gets the (scripted, so not rate-limited) picture after hang_seconds.
    started = time.monotonic()
    _image(_run(faulty_sim, fields, timeout=10))
    assert time.monotonic() - started >= 1.4
    # The answer the impatient client left behind is recorded as never taken.
    records = httpx.get(f"{faulty_sim}/__sim/requests", params={"prompt": prompt}).json()
    assert [record["status"] for record in records] == [499, 200]


def test_concurrency_is_tracked(slow_sim: str) -> None:
    assert httpx.post(f"{slow_sim}/__sim/reset").status_code == 200
    url = _url(slow_sim)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def burst() -> tuple[list[httpx.Response], dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            parts = {"prompt": (None, "burst"), "width": (None, "256"), "height": (None, "256")}
            calls = [client.post(url, files=parts, headers=headers) for _ in range(20)]
            tasks = [asyncio.ensure_future(call) for call in calls]
            await asyncio.sleep(0.25)
            during = (await client.get(f"{slow_sim}/__sim/stats")).json()
            return list(await asyncio.gather(*tasks)), during

    started = time.monotonic()
    responses, during = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert during["in_flight"] > 0
    assert elapsed < 5  # 20 x 0.5 s one after another would take 10 s
    stats = httpx.get(f"{slow_sim}/__sim/stats").json()
    assert stats["max_in_flight"] >= 20
    assert stats["in_flight"] == 0
    assert stats["requests"] == 20
    assert stats["by_prompt"] == {"burst": 20}
    assert stats["by_status"] == {"200": 20}


def test_stats_count_rejected_requests_and_reset(slow_sim: str) -> None:
    assert httpx.post(f"{slow_sim}/__sim/reset").status_code == 200
    _run(slow_sim, {"prompt": "counted"}, token="bad")
    httpx.post(_url(slow_sim), json={"prompt": "json"}, headers={"Authorization": "Bearer t0k"})
    _run(slow_sim, {"prompt": "counted", "width": 256, "height": 256})
    stats = httpx.get(f"{slow_sim}/__sim/stats").json()
    assert stats["requests"] == 3
    assert stats["by_status"] == {"401": 1, "400": 1, "200": 1}
    # The 401 never got its body parsed; the JSON body has no prompt field.
    assert stats["by_prompt"] == {"counted": 1}
    assert httpx.post(f"{slow_sim}/__sim/reset").status_code == 200
    reset = httpx.get(f"{slow_sim}/__sim/stats").json()
    assert reset["requests"] == 0
    assert reset["by_status"] == {}


def test_requests_are_recorded_with_field_names(sim: str) -> None:
    prompt = "recorded request"
    fields = {"prompt": prompt, "width": 256, "height": 320, "seed": 9, "extra": "kept"}
    reference = _png(64, 48)
    files = {"input_image_0": ("ref.png", reference, "image/png")}
    _image(_run(sim, fields, files))
    _error(_run(sim, {"prompt": prompt, "width": 99}), 400, 5004)

    records = httpx.get(f"{sim}/__sim/requests", params={"prompt": prompt}).json()
    received = [record.pop("received_at") for record in records]
    assert received == sorted(received)
    assert all(abs(time.time() - at) < 60 for at in received)
    assert records == [
        {
            "content_type": "multipart/form-data",
            "fields": {k: str(v) for k, v in fields.items()},
            "files": {
                "input_image_0": {
                    "bytes": len(reference),
                    "width": 64,
                    "height": 48,
                    "filename": "ref.png",
                }
            },
            "status": 200,
            "fault": "ok",
        },
        {
            "content_type": "multipart/form-data",
            "fields": {"prompt": prompt, "width": "99"},
            "files": {},
            "status": 400,
            "fault": None,  # refused before any fault was drawn
        },
    ]
    nobody = httpx.get(f"{sim}/__sim/requests", params={"prompt": "never sent"})
    assert nobody.json() == []


def _stats(base: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{base}/__sim/stats").json()
    return stats


def test_without_the_cache_every_new_picture_is_drawn(sim: str) -> None:
    fields = {"prompt": "drawn each time", "seed": 0, "width": 256, "height": 320}
    before = _stats(sim)
    first, _ = _image(_run(sim, fields))
    other_seed, _ = _image(_run(sim, {**fields, "seed": CACHE_VARIANTS}))
    # The very same request again is answered from the renderer's small memo.
    again, _ = _image(_run(sim, fields))
    after = _stats(sim)
    assert first != other_seed
    assert again == first
    assert after["renders"] - before["renders"] == 2
    assert after["cache_hits"] is None


def test_the_cache_draws_each_picture_once(cached_sim: str) -> None:
    fields = {"prompt": "cached", "seed": 0, "width": 256, "height": 320}
    before = _stats(cached_sim)
    first = _run(cached_sim, fields)
    data, picture = _image(first)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (picture.format, picture.size) == ("PNG", (256, 320))
    assert len(picture.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100
    # Another prompt, model and a seed of the same variant: the same body, base64 and all.
    same_variant = {**fields, "prompt": "another prompt", "seed": 3 * CACHE_VARIANTS}
    again = _run(cached_sim, same_variant, model="flux-2-klein-9b")
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"] == "application/json"
    # The neurons are still those of each request (1 tile of klein-4b; klein-9b's first MP).
    assert (first.headers["cf-ai-neurons"], again.headers["cf-ai-neurons"]) == (
        "26.09",
        "1363.64",
    )
    other_variant, _ = _image(_run(cached_sim, {**fields, "seed": 1}))
    other_size, resized = _image(_run(cached_sim, {**fields, "width": 512}))
    assert len({data, other_variant, other_size}) == 3
    assert resized.size == (512, 320)
    after = _stats(cached_sim)
    assert after["renders"] - before["renders"] == 3
    assert after["cache_hits"] - before["cache_hits"] == 1


def test_the_cache_draws_once_for_concurrent_requests(cached_sim: str) -> None:
    url = _url(cached_sim)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [
                client.post(
                    url,
                    headers=headers,
                    files={
                        "prompt": (None, f"burst {n}"),
                        "width": (None, "304"),
                        "height": (None, "272"),
                        "seed": (None, str(n * CACHE_VARIANTS)),
                    },
                )
                for n in range(8)
            ]
            return list(await asyncio.gather(*calls))

    before = _stats(cached_sim)
    responses = asyncio.run(burst())
    after = _stats(cached_sim)
    assert len({_image(response)[0] for response in responses}) == 1
    assert after["renders"] - before["renders"] == 1
    assert after["cache_hits"] - before["cache_hits"] == 7


def test_the_cache_is_a_setting_too(tmp_path: Path) -> None:
    on = {"FLUXGATE_SIMULATOR_CACHE": "true"}
    with contextlib.contextmanager(_start)(tmp_path / "on.log", env=on) as base:
        assert _stats(base)["cache_hits"] == 0
    # The command line wins over the setting.
    with contextlib.contextmanager(_start)(tmp_path / "off.log", "--no-cache", env=on) as base:
        assert _stats(base)["cache_hits"] is None

"""Editing with reference images end to end, input costs, and every hostile upload refused
with its 4xx while the API stays up."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from app.core.images import DecodeBudget, InputImageError, InputLimits, prepare_input_image
from tests.harness.images import (
    b64,
    exif_rotated_jpeg,
    gif,
    picture,
    png_claiming,
    solid_png,
    transparent_png,
)
from tests.harness.stack import Stack
from tests.helpers import FINAL, assert_error, unique, wait_for_job

LIMITS = InputLimits(
    max_bytes=1024 * 1024, max_pixels=16_000_000, max_side=512, budget=DecodeBudget(2**30)
)


def stored_inputs(stack: Stack, job_id: str) -> list[Image.Image]:
    rows = stack.sql(
        "SELECT data FROM job_images WHERE job_id = :job_id AND role = 'input' ORDER BY position",
        job_id=job_id,
    )
    return [Image.open(io.BytesIO(bytes(row[0]))) for row in rows]


def test_json_edit_with_one_image(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("make it blue")
    body = {
        "prompt": prompt,
        "width": 1024,
        "height": 768,
        "input_images": [b64(picture(300, 400))],
    }
    job = client.post("/v1/jobs", json=body).json()
    assert job["params"]["input_images"] == 1
    assert job["cost"]["estimated"] == "0.001207"  # 4 x 0.000287 + 1 x 0.000059
    assert job["cost"]["input_tiles"] == 1
    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded", done
    assert done["cost"]["charged"] == "0.001207"
    [sent] = stack.simulator.requests_for(prompt)
    assert sent["content_type"] == "multipart/form-data"
    assert set(sent["files"]) == {"input_image_0"}
    assert (sent["files"]["input_image_0"]["width"], sent["files"]["input_image_0"]["height"]) == (
        300,
        400,
    )
    # The broker carried only the id: the image is stored with the job.
    [stored] = stored_inputs(stack, job["id"])
    assert stored.format == "PNG"
    assert stored.size == (300, 400)


def test_multipart_edit_with_two_images_costs_the_contract_example(
    stack: Stack, client: httpx.Client
) -> None:
    prompt = unique("combine these")
    files = {
        "prompt": (None, prompt),
        "input_image_0": ("a.png", picture(512, 512), "image/png"),
        "input_image_1": ("b.webp", picture(200, 300, fmt="WEBP"), "image/webp"),
    }
    response = client.post("/v1/jobs", files=files)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["cost"]["estimated"] == "0.001266"
    assert (job["cost"]["input_tiles"], job["cost"]["output_tiles"]) == (2, 4)
    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded", done
    assert done["cost"]["charged"] == "0.001266"
    [sent] = stack.simulator.requests_for(prompt)
    assert sorted(sent["files"]) == ["input_image_0", "input_image_1"]
    assert sent["files"]["input_image_1"]["width"] == 200


def test_large_inputs_are_downscaled_to_fit_512(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("downscale")
    body = {
        "prompt": prompt,
        "width": 512,
        "height": 512,
        "input_images": [b64(picture(1800, 900, fmt="JPEG")), b64(picture(600, 1200))],
    }
    job = client.post("/v1/jobs", json=body).json()
    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded", done
    assert [image.size for image in stored_inputs(stack, job["id"])] == [(512, 256), (256, 512)]
    [sent] = stack.simulator.requests_for(prompt)
    sizes = [(f["width"], f["height"]) for _, f in sorted(sent["files"].items())]
    assert sizes == [(512, 256), (256, 512)]


def test_exif_orientation_and_alpha_are_applied(stack: Stack, client: httpx.Client) -> None:
    body = {
        "prompt": unique("upright"),
        "width": 512,
        "height": 512,
        "input_images": [b64(exif_rotated_jpeg(400, 200)), b64(transparent_png(64, 64))],
    }
    job = client.post("/v1/jobs", json=body).json()
    assert wait_for_job(client, job["id"], statuses=FINAL)["status"] == "succeeded"
    rotated, flattened = stored_inputs(stack, job["id"])
    assert rotated.size == (200, 400)
    assert flattened.mode == "RGB"
    assert flattened.getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("body", "estimated"),
    [
        ({"model": "flux-2-klein-9b", "width": 1024, "height": 1024}, "0.017"),  # + 1 input MP
        (
            {"model": "flux-2-dev", "width": 512, "height": 512},
            "0.0155",
        ),  # (1 + 1) tiles x 25 steps
    ],
)
def test_input_costs_per_model(client: httpx.Client, body: dict[str, Any], estimated: str) -> None:
    quote = client.post(
        "/v1/quote", json={"prompt": "x", **body, "input_images": [b64(picture(512, 512))]}
    )
    assert quote.status_code == 200, quote.text
    assert quote.json()["estimated"] == estimated
    assert quote.json()["input_tiles"] == 1


# ---- hostile uploads ---------------------------------------------------------------------


def json_with(image: bytes) -> dict[str, Any]:
    return {"prompt": "x", "input_images": [b64(image)]}


HOSTILE_JSON = [
    # (image bytes, status, code)
    (png_claiming(20000, 20000), 413, "image_too_large"),  # beyond Pillow's own bomb limit
    (png_claiming(6000, 6000), 413, "image_too_large"),  # beyond our pixel limit, header only
    (solid_png(5000, 4000), 413, "image_too_large"),  # a real 20 MP image in 19 KB
    (b"\x89PNG\r\n\x1a\nthis is text posing as a PNG", 422, "invalid_image"),
    (b"plain text, no image at all", 415, "unsupported_image_type"),
    (gif(16, 16), 415, "unsupported_image_type"),
    (picture(640, 480, fmt="JPEG")[:3000], 422, "invalid_image"),  # truncated JPEG
    (picture(64, 64)[:-20], 422, "invalid_image"),  # PNG missing its end
    (
        b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + 1),
        413,
        "image_too_large",
    ),  # over the byte limit
    (b"", 415, "unsupported_image_type"),
]


@pytest.mark.parametrize(("image", "status", "code"), HOSTILE_JSON)
def test_hostile_json_images(client: httpx.Client, image: bytes, status: int, code: str) -> None:
    assert_error(client.post("/v1/jobs", json=json_with(image)), status, code, "input_images")


@pytest.mark.parametrize(("image", "status", "code"), HOSTILE_JSON)
def test_hostile_multipart_images(
    client: httpx.Client, image: bytes, status: int, code: str
) -> None:
    files = {"prompt": (None, "x"), "input_image_0": ("x.png", image, "image/png")}
    assert_error(client.post("/v1/jobs", files=files), status, code, "input_image_0")


def test_not_base64(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"prompt": "x", "input_images": ["%%%not base64%%%"]})
    assert_error(response, 422, "invalid_image", "input_images")


def test_five_images_are_refused(client: httpx.Client) -> None:
    five = [b64(picture(32, 32))] * 5
    assert_error(
        client.post("/v1/jobs", json={"prompt": "x", "input_images": five}),
        422,
        "invalid_parameter",
        "input_images",
    )
    files = {
        "prompt": (None, "x"),
        **{f"input_image_{i}": (f"{i}.png", picture(32, 32), "image/png") for i in range(5)},
    }
    assert_error(client.post("/v1/jobs", files=files), 422, "unknown_parameter", "input_image_4")


def test_other_file_names_are_refused(client: httpx.Client) -> None:
    files = {"prompt": (None, "x"), "image": ("a.png", picture(32, 32), "image/png")}
    assert_error(client.post("/v1/jobs", files=files), 422, "unknown_parameter", "image")


def test_whole_request_limit_applies_to_multipart(client: httpx.Client) -> None:
    # Each part is within its own limit; together they pass FLUXGATE_MAX_REQUEST_BYTES.
    near_limit = b"\x89PNG\r\n\x1a\n" + b"\0" * 1_040_000
    files = {
        "prompt": (None, "x"),
        **{f"input_image_{i}": (f"{i}.png", near_limit, "image/png") for i in range(4)},
        "metadata": (None, "x" * 200_000),
    }
    assert_error(client.post("/v1/jobs", files=files), 413, "request_too_large", None)


def test_api_stays_up_under_concurrent_hostile_uploads(stack: Stack, client: httpx.Client) -> None:
    hostile = [json_with(image) for image, _, _ in HOSTILE_JSON] * 3

    def attack(body: dict[str, Any]) -> int:
        return client.post("/v1/jobs", json=body).status_code

    with ThreadPoolExecutor(12) as pool:
        attacks = [pool.submit(attack, body) for body in hostile]
        health = [httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code for _ in range(20)]
        statuses = [future.result() for future in attacks]
    assert set(health) == {200}
    assert all(400 <= status < 500 for status in statuses), statuses
    # And real work still goes through afterwards.
    job = client.post(
        "/v1/jobs", json={"prompt": unique("still fine"), "width": 256, "height": 256}
    ).json()
    assert wait_for_job(client, job["id"], statuses=FINAL)["status"] == "succeeded"


def test_input_max_side_is_a_setting() -> None:
    prepared = prepare_input_image(
        picture(800, 400),
        limits=InputLimits(
            max_bytes=10**7, max_pixels=10**8, max_side=256, budget=DecodeBudget(2**32)
        ),
    )
    assert (prepared.info.width, prepared.info.height) == (256, 128)
    assert (prepared.original_width, prepared.original_height) == (800, 400)
    with pytest.raises(InputImageError, match="pixels"):
        prepare_input_image(png_claiming(6000, 6000), limits=LIMITS)

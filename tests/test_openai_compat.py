"""The official `openai` client, unchanged, against the running gateway."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.harness.images import picture
from tests.harness.stack import Stack
from tests.helpers import unique


@pytest.fixture
def oai(stack: Stack, api_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=f"{stack.api_url}/v1", api_key=api_key, max_retries=0, timeout=60
    )
    yield client
    client.close()


def decode(b64_json: str | None) -> Image.Image:
    assert b64_json is not None
    return Image.open(io.BytesIO(base64.b64decode(b64_json)))


def test_generate_two_as_b64_json(stack: Stack, oai: openai.OpenAI, client: httpx.Client) -> None:
    prompt = unique("two lighthouses")
    before = {job["id"] for job in client.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    result = oai.images.generate(prompt=prompt, n=2, size="512x512", response_format="b64_json")
    assert len(result.data) == 2
    images = [decode(item.b64_json) for item in result.data]
    assert all(image.size == (512, 512) and image.format == "PNG" for image in images)
    assert images[0].tobytes() != images[1].tobytes()
    assert result.created > 0
    # One job, one charge each.
    jobs = [
        job
        for job in client.get("/v1/jobs", params={"limit": 100}).json()["data"]
        if job["id"] not in before and job["params"]["prompt"] == prompt
    ]
    assert len(jobs) == 2
    assert all(job["cost"]["charged"] == "0.000287" for job in jobs)
    assert stack.simulator.count(prompt) == 2


def test_generate_as_url_works_without_the_key_until_it_expires(
    stack: Stack, oai: openai.OpenAI
) -> None:
    result = oai.images.generate(prompt=unique("by link"), size="256x256", model="flux-2-klein-4b")
    [item] = result.data
    assert item.url is not None
    assert item.url.startswith(stack.api_url + "/v1/images/shared/")
    fetched = httpx.get(item.url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (256, 256)
    webp = httpx.get(item.url, params={"format": "webp"})
    assert Image.open(io.BytesIO(webp.content)).format == "WEBP"
    stack.execute("UPDATE image_links SET expires_at = created_at")  # expire it
    expired = httpx.get(item.url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "link_not_found"
    assert httpx.get(item.url.rsplit("/", 1)[0] + "/not-a-token").status_code == 404


def test_edit_with_one_image(stack: Stack, oai: openai.OpenAI) -> None:
    prompt = unique("make it night")
    result = oai.images.edit(
        image=("photo.png", picture(640, 480), "image/png"),
        prompt=prompt,
        size="512x512",
        response_format="b64_json",
    )
    assert decode(result.data[0].b64_json).size == (512, 512)
    [sent] = stack.simulator.requests_for(prompt)
    assert list(sent["files"]) == ["input_image_0"]
    assert (sent["files"]["input_image_0"]["width"], sent["files"]["input_image_0"]["height"]) == (
        512,
        384,
    )


def test_edit_with_several_images(stack: Stack, oai: openai.OpenAI) -> None:
    prompt = unique("combine")
    result = oai.images.edit(
        image=[
            ("a.png", picture(300, 300), "image/png"),
            ("b.jpg", picture(200, 100, fmt="JPEG"), "image/jpeg"),
            ("c.webp", picture(128, 128, fmt="WEBP"), "image/webp"),
        ],
        prompt=prompt,
        size="256x256",
        response_format="b64_json",
        output_format="jpeg",
    )
    assert decode(result.data[0].b64_json).format == "JPEG"
    [sent] = stack.simulator.requests_for(prompt)
    assert sorted(sent["files"]) == ["input_image_0", "input_image_1", "input_image_2"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "1000x1000"}, "size"),
        ({"size": "huge"}, "size"),
        ({"n": 5}, "n"),
        ({"model": "dall-e-3"}, "model"),
        ({"response_format": "png"}, "response_format"),
    ],
)
def test_bad_requests_raise_bad_request_error(
    oai: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(prompt="x", **kwargs)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"


def test_mask_is_refused_clearly(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.edit(
            image=("a.png", picture(64, 64), "image/png"),
            mask=("m.png", picture(64, 64), "image/png"),
            prompt="x",
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "mask"
    assert "not supported" in caught.value.message


def test_hostile_edit_image_is_a_4xx(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        oai.images.edit(image=("a.png", b"not an image", "image/png"), prompt="x")
    assert caught.value.status_code == 415
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "image"


def test_wrong_key_raises_authentication_error(stack: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.api_url}/v1",
        api_key="fgk_wrong-key-000000000000000000000000",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(prompt="x")


def test_failed_generation_is_a_server_error(stack: Stack, oai: openai.OpenAI) -> None:
    prompt = unique("always fails")
    stack.simulator.script(prompt, ["3036"])
    with pytest.raises(openai.InternalServerError) as caught:
        oai.images.generate(prompt=prompt, size="256x256")
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_quota_exhausted"

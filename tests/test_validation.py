"""Every rule of the contract's field table, as JSON and as multipart, answered in the envelope."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import assert_error

VALID = {"prompt": "a red bicycle"}
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # FLUXGATE_MAX_REQUEST_BYTES of the test stacks


BAD_FIELDS = [
    # (body, param, code)
    ({}, "prompt", "missing_parameter"),
    ({"prompt": ""}, "prompt", "invalid_parameter"),
    ({"prompt": "x" * 4097}, "prompt", "invalid_parameter"),
    ({"prompt": 5}, "prompt", "invalid_parameter"),
    ({**VALID, "model": "flux-3"}, "model", "invalid_parameter"),
    ({**VALID, "model": "@cf/black-forest-labs/flux-9"}, "model", "invalid_parameter"),
    ({**VALID, "width": 240}, "width", "invalid_parameter"),
    ({**VALID, "width": 1936}, "width", "invalid_parameter"),
    ({**VALID, "width": 1000}, "width", "invalid_parameter"),
    ({**VALID, "height": 250}, "height", "invalid_parameter"),
    ({**VALID, "height": 1930}, "height", "invalid_parameter"),
    ({**VALID, "height": 777}, "height", "invalid_parameter"),
    ({**VALID, "width": "1024"}, "width", "invalid_parameter"),
    ({**VALID, "width": 1024.5}, "width", "invalid_parameter"),
    ({**VALID, "width": True}, "width", "invalid_parameter"),
    ({**VALID, "seed": -1}, "seed", "invalid_parameter"),
    ({**VALID, "seed": 4294967296}, "seed", "invalid_parameter"),
    ({**VALID, "seed": "7"}, "seed", "invalid_parameter"),
    ({**VALID, "guidance": 0}, "guidance", "invalid_parameter"),
    ({**VALID, "guidance": -1.5}, "guidance", "invalid_parameter"),
    ({**VALID, "guidance": 20.01}, "guidance", "invalid_parameter"),
    ({**VALID, "guidance": "high"}, "guidance", "invalid_parameter"),
    ({**VALID, "steps": 8}, "steps", "invalid_parameter"),
    ({**VALID, "model": "flux-2-klein-9b", "steps": 1}, "steps", "invalid_parameter"),
    ({**VALID, "model": "flux-2-dev", "steps": 0}, "steps", "invalid_parameter"),
    ({**VALID, "model": "flux-2-dev", "steps": 51}, "steps", "invalid_parameter"),
    ({**VALID, "metadata": {"k": 1}}, "metadata", "invalid_parameter"),
    ({**VALID, "metadata": {"k": {"nested": "x"}}}, "metadata", "invalid_parameter"),
    ({**VALID, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_parameter"),
    ({**VALID, "metadata": ["a"]}, "metadata", "invalid_parameter"),
    ({**VALID, "metadata": {"k": "v" * 513}}, "metadata", "invalid_parameter"),
    ({**VALID, "webhook_url": "ftp://example.com/hook"}, "webhook_url", "invalid_parameter"),
    ({**VALID, "webhook_url": "http://169.254.169.254/"}, "webhook_url", "invalid_parameter"),
    ({**VALID, "input_images": "aGVsbG8="}, "input_images", "invalid_parameter"),
    ({**VALID, "input_images": [1]}, "input_images", "invalid_parameter"),
    ({**VALID, "input_images": ["aGVsbG8="] * 5}, "input_images", "invalid_parameter"),
    ({**VALID, "witdh": 512}, "witdh", "unknown_parameter"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_FIELDS)
def test_json_field_rules(
    client: httpx.Client, body: dict[str, Any], param: str, code: str
) -> None:
    assert_error(client.post("/v1/jobs", json=body), 422, code, param)
    # The quote takes the same body and applies the same rules.
    assert_error(client.post("/v1/quote", json=body), 422, code, param)


FORM_BAD = [
    ({"prompt": "x", "width": "abc"}, "width"),
    ({"prompt": "x", "width": "1000"}, "width"),
    ({"prompt": "x", "seed": "-3"}, "seed"),
    ({"prompt": "x", "guidance": "nan"}, "guidance"),
    ({"prompt": "x", "guidance": "inf"}, "guidance"),
    ({"prompt": "x", "steps": "5"}, "steps"),
    ({"prompt": "x", "metadata": "{not json"}, "metadata"),
    ({"prompt": "x", "metadata": '{"a": 1}'}, "metadata"),
    ({"prompt": "x", "model": "sdxl"}, "model"),
]


@pytest.mark.parametrize(("fields", "param"), FORM_BAD)
def test_multipart_field_rules(client: httpx.Client, fields: dict[str, str], param: str) -> None:
    files = {name: (None, value) for name, value in fields.items()}
    assert_error(client.post("/v1/jobs", files=files), 422, "invalid_parameter", param)


def test_multipart_missing_prompt(client: httpx.Client) -> None:
    assert_error(
        client.post("/v1/jobs", files={"width": (None, "512")}), 422, "missing_parameter", "prompt"
    )


def test_multipart_duplicate_field(client: httpx.Client) -> None:
    files = [("prompt", (None, "x")), ("prompt", (None, "y"))]
    assert_error(client.post("/v1/jobs", files=files), 422, "invalid_parameter", "prompt")


def test_boundary_values_are_accepted(client: httpx.Client) -> None:
    body = {
        "prompt": "p" * 4096,
        "width": 256,
        "height": 1920,
        "seed": 4294967295,
        "guidance": 20,
        "metadata": {f"k{i}": "v" for i in range(16)},
    }
    response = client.post("/v1/quote", json=body)
    assert response.status_code == 200, response.text
    response = client.post(
        "/v1/quote",
        json={"prompt": "x", "model": "flux-2-dev", "steps": 50, "width": 1920, "height": 256},
    )
    assert response.status_code == 200, response.text
    # klein accepts its fixed step count when sent explicitly.
    assert client.post("/v1/quote", json={"prompt": "x", "steps": 4}).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b"prompt=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"prompt", "text/plain", 415, "unsupported_media_type"),
        (b"--x\r\nbroken", "multipart/form-data", 400, "invalid_multipart"),
    ],
)
def test_malformed_bodies(
    client: httpx.Client, content: bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", content=content, headers={"Content-Type": content_type})
    assert_error(response, status, code, None)


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    body = b'{"prompt": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "request_too_large", None)


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"prompt": "'
        for _ in range(MAX_REQUEST_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    response = client.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "request_too_large", None)


def test_auth_is_required(stack: object, client: httpx.Client) -> None:
    anonymous = httpx.Client(base_url=str(client.base_url))
    for method, path in [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/job_x"),
        ("GET", "/v1/jobs/job_x/image"),
        ("POST", "/v1/jobs/job_x/cancel"),
        ("POST", "/v1/quote"),
        ("GET", "/v1/models"),
    ]:
        response = anonymous.request(method, path)
        assert_error(response, 401, "missing_api_key", None)
        assert response.headers["www-authenticate"] == "Bearer"
        bad = anonymous.request(
            method, path, headers={"Authorization": "Bearer fgk_not-a-real-key-at-all-000000000"}
        )
        assert_error(bad, 401, "invalid_api_key", None)
        basic = anonymous.request(method, path, headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert_error(basic, 401, "invalid_api_key", None)


def test_list_query_rules(client: httpx.Client) -> None:
    assert_error(
        client.get("/v1/jobs", params={"status": "done"}), 422, "invalid_parameter", "status"
    )
    assert_error(client.get("/v1/jobs", params={"limit": 0}), 422, "invalid_parameter", "limit")
    assert_error(client.get("/v1/jobs", params={"limit": 101}), 422, "invalid_parameter", "limit")
    assert_error(client.get("/v1/jobs", params={"limit": "ten"}), 422, "invalid_parameter", "limit")
    assert_error(
        client.get("/v1/jobs", params={"cursor": "garbage"}), 422, "invalid_parameter", "cursor"
    )


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found", None)
    assert_error(client.delete("/v1/jobs"), 405, "method_not_allowed", None)


def test_image_format_must_be_known(client: httpx.Client) -> None:
    response = client.get("/v1/jobs/job_00000000000000000000000000/image", params={"format": "gif"})
    assert_error(response, 422, "invalid_parameter", "format")

"""The Workers AI client over real HTTP against the simulator, including answers the gateway
itself never provokes (invalid data, bad token, unknown model)."""

from __future__ import annotations

import uuid

import pytest

from app.upstream.workers_ai import GenerationRequest, UpstreamError, WorkersAIClient
from tests.harness.stack import SIM_TOKEN, Stack


def client_for(stack: Stack, token: str = SIM_TOKEN) -> WorkersAIClient:
    return WorkersAIClient(
        base_url=f"{stack.simulator.url}/client/v4",
        account_id="acct",
        api_token=token,
        connect_timeout=1,
        read_timeout=5,
        max_connections=4,
    )


def request(prompt: str, **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "upstream_model": "@cf/black-forest-labs/flux-2-klein-4b",
        "prompt": prompt,
        "width": 256,
        "height": 256,
        **overrides,
    }
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def test_prompt_only_request_is_multipart(stack: Stack) -> None:
    prompt = f"only a prompt {uuid.uuid4().hex[:6]}"
    result = client_for(stack).generate(request(prompt))
    assert result.image.startswith(b"\x89PNG")
    assert result.neurons is not None
    [sent] = stack.simulator.requests_for(prompt)
    assert sent["content_type"] == "multipart/form-data"
    assert set(sent["fields"]) == {"prompt", "width", "height"}


def test_invalid_data_is_final(stack: Stack) -> None:
    with pytest.raises(UpstreamError) as caught:
        client_for(stack).generate(request("steps on klein", steps=8))
    assert caught.value.upstream_code == 5004
    assert caught.value.http_status == 400
    assert not caught.value.retryable
    assert caught.value.code == "upstream_invalid_request"


def test_unknown_model_is_final(stack: Stack) -> None:
    with pytest.raises(UpstreamError) as caught:
        client_for(stack).generate(request("x", upstream_model="@cf/black-forest-labs/flux-9"))
    assert (caught.value.upstream_code, caught.value.retryable) == (5007, False)


def test_bad_token_is_final(stack: Stack) -> None:
    with pytest.raises(UpstreamError) as caught:
        client_for(stack, token="wrong").generate(request("x"))
    assert caught.value.http_status == 401
    assert caught.value.code == "upstream_forbidden"
    assert not caught.value.retryable


def test_unreachable_upstream_is_retryable() -> None:
    client = WorkersAIClient(
        base_url="http://127.0.0.1:9/client/v4",
        account_id="a",
        api_token="t",
        connect_timeout=0.5,
        read_timeout=1,
        max_connections=1,
    )
    with pytest.raises(UpstreamError) as caught:
        client.generate(request("x"))
    assert caught.value.retryable
    assert caught.value.code == "upstream_unreachable"
    assert caught.value.message == "could not reach Workers AI (the connection could not be made)"

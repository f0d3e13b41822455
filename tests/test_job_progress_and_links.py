"""What a Job tells its client: image links absolute under FLUXGATE_PUBLIC_URL, in the API's
answers and in webhook bodies. Both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.harness.stack import Stack, running_gateway
from tests.helpers import unique
from tests.receiver import Receiver

PUBLIC_URL = "https://images.example.com/fluxgate"


@dataclass
class Gateway:
    stack: Stack
    key: str
    secret: str
    receiver: Receiver

    def client(self) -> httpx.Client:
        return self.stack.client(self.key)


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def gateway(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    receiver = Receiver("127.0.0.1")
    try:
        with running_gateway(
            log_dir,
            backend=request.param,
            latency=0.05,
            worker=True,
            public_url=f"{PUBLIC_URL}/",  # the trailing slash is the operator's; links have none
            webhook_allowed_networks="127.0.0.1/32",
        ) as stack:
            key, _, secret = stack.create_key_with_secret("progress")
            yield Gateway(stack, key, secret, receiver)
    finally:
        receiver.close()


def submit(client: httpx.Client, prompt: str, **fields: Any) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512, **fields})
    assert answer.status_code == 202, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_image_links_are_absolute_under_public_url_in_answers_and_webhooks(
    gateway: Gateway,
) -> None:
    path = f"/ok/{uuid.uuid4().hex}"
    with gateway.client() as client:
        answer = client.post(
            "/v1/jobs",
            json={"prompt": unique("linked"), "webhook_url": gateway.receiver.url(path)},
            headers={"Prefer": "wait=30"},
        )
        assert answer.status_code == 200, answer.text
        job_id = answer.json()["id"]
        link = f"{PUBLIC_URL}/v1/jobs/{job_id}/image"
        # The answer of a waited-for submission, the job, and the list.
        assert answer.json()["output"]["image_url"] == link
        assert client.get(f"/v1/jobs/{job_id}").json()["output"]["image_url"] == link
        listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()
        assert [row["output"]["image_url"] for row in listed["data"] if row["id"] == job_id] == [
            link
        ]
        # Behind PUBLIC_URL's path prefix is the gateway's own path: the link names the image.
        image = client.get(link.removeprefix(PUBLIC_URL))
        assert image.status_code == 200
        assert image.content.startswith(b"\x89PNG")

    [received] = gateway.receiver.wait_for(path)
    event = Webhook(gateway.secret).verify(received.body, received.headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["output"]["image_url"] == link

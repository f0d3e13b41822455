"""What a Job tells its client on the way and at the end: why it waits between attempts and when
it is tried again, error messages in our words (never a Python repr), and image links absolute
under FLUXGATE_PUBLIC_URL, in the API's answers and in webhook bodies. Both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.harness.processes import wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, unique, wait_for_job
from tests.receiver import Receiver

PUBLIC_URL = "https://images.example.com/fluxgate"
RETRY_AFTER = 5  # seconds the simulator's 3040 asks for: long enough to look at the job


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
            # The test stack caps waits at 2 s; here a Retry-After of 5 s is honoured.
            retry_max_seconds="10",
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


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_job_between_attempts_shows_its_last_error_and_when_it_is_tried_again(
    gateway: Gateway,
) -> None:
    prompt = unique("retried")
    gateway.stack.simulator.script(prompt, [f"3040@{RETRY_AFTER}", "ok"])
    with gateway.client() as client:
        job = submit(client, prompt)
        assert (job["last_error"], job["next_attempt_at"]) == (None, None)
        waiting: dict[str, Any] = {}

        def between_attempts() -> bool:
            nonlocal waiting
            waiting = client.get(f"/v1/jobs/{job['id']}").json()
            return waiting["status"] == "queued" and waiting["attempts"] == 1

        wait_until(between_attempts, timeout=20, interval=0.1, what="the first attempt to fail")
        assert waiting["error"] is None  # the contract: null until the job has failed
        assert waiting["last_error"] == {
            "code": "upstream_capacity",
            "message": "Workers AI was out of capacity "
            '(error 3040: "Capacity temporarily exceeded, please try again.")',
            "upstream_code": 3040,
        }
        [first_call] = gateway.stack.simulator.requests_for(prompt)
        due_in = at(waiting["next_attempt_at"]) - first_call["received_at"]
        # Retry-After is a floor; the rest is the call and the write, slow on a busy machine.
        assert RETRY_AFTER <= due_in < RETRY_AFTER + 4, waiting["next_attempt_at"]
        # The list shows the same Job.
        listed = client.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]
        [same] = [row for row in listed if row["id"] == job["id"]]
        assert same["next_attempt_at"] == waiting["next_attempt_at"]

        done = wait_for_job(client, job["id"], statuses=FINAL, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert (done["error"], done["last_error"], done["next_attempt_at"]) == (None, None, None)
    _, second = gateway.stack.simulator.requests_for(prompt)
    assert second["received_at"] >= at(waiting["next_attempt_at"]) - 0.5  # clocks: one machine


def test_a_job_canceled_between_attempts_did_not_fail(gateway: Gateway) -> None:
    """Canceled while it waited for its retry: no error, nothing to wait for; the webhook's
    Job says the same."""
    prompt = unique("canceled between attempts")
    gateway.stack.simulator.script(prompt, [f"3040@{RETRY_AFTER}", "ok"])
    path = f"/ok/{uuid.uuid4().hex}"
    with gateway.client() as client:
        job = submit(client, prompt, webhook_url=gateway.receiver.url(path))
        wait_until(
            lambda: client.get(f"/v1/jobs/{job['id']}").json()["last_error"] is not None,
            timeout=20,
            interval=0.1,
            what="the first attempt to fail",
        )
        canceled = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert canceled.status_code == 200, canceled.text
        body = canceled.json()
    assert body["status"] == "canceled"
    assert (body["error"], body["last_error"], body["next_attempt_at"]) == (None, None, None)
    [delivered] = gateway.receiver.wait_for(path)
    event = Webhook(gateway.secret).verify(delivered.body, delivered.headers)
    assert event["type"] == "job.canceled"
    assert event["data"]["error"] is None


def test_the_openapi_description_documents_the_new_fields(gateway: Gateway) -> None:
    schema = httpx.get(f"{gateway.stack.api_url}/openapi.json").json()
    job = schema["components"]["schemas"]["JobOut"]
    assert {"last_error", "next_attempt_at"} <= set(job["required"])
    assert (
        "FLUXGATE_PUBLIC_URL"
        in (schema["components"]["schemas"]["JobOutput"]["properties"]["image_url"]["description"])
    )


def test_an_unreadable_upstream_image_is_described_in_our_words(gateway: Gateway) -> None:
    """Pillow's own message for it names a Python object ("cannot identify image file
    <_io.BytesIO object at 0x...>"); the job's message must not."""
    prompt = unique("not an image")
    gateway.stack.simulator.script(prompt, ["notimage"] * 4)  # every attempt of the test stack
    with gateway.client() as client:
        job = submit(client, prompt)
        done = wait_for_job(client, job["id"], statuses=FINAL, timeout=30)
    assert done["status"] == "failed", done
    assert done["error"] == {
        "code": "upstream_bad_response",
        "message": "Workers AI returned an image that is not a PNG, JPEG or WebP image",
        "upstream_code": None,
    }
    assert (done["last_error"], done["next_attempt_at"]) == (None, None)


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

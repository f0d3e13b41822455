"""The pipeline end to end: submit -> queue -> simulator -> stored image + exact cost -> poll."""

from __future__ import annotations

import hashlib
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from tests.harness.stack import Stack
from tests.helpers import FINAL, assert_error, unique, wait_for_job


def test_submit_poll_download(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("a lighthouse at dusk")
    response = client.post(
        "/v1/jobs", json={"prompt": prompt, "seed": 7, "metadata": {"order": "42"}}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["object"] == "job"
    assert job["id"].startswith("job_")
    assert job["model"] == "flux-2-klein-4b"
    assert job["params"] == {
        "prompt": prompt,
        "width": 1024,
        "height": 768,
        "seed": 7,
        "guidance": None,
        "steps": 4,
        "input_images": 0,
    }
    assert job["cost"] == {
        "currency": "USD",
        "estimated": "0.001148",
        "charged": None,
        "input_tiles": 0,
        "output_tiles": 4,
        "upstream_neurons": None,
    }
    assert job["metadata"] == {"order": "42"}
    assert job["webhook_url"] is None
    if job["status"] == "queued":
        assert isinstance(job["queue_position"], int)
        assert job["queue_position"] >= 1

    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded", done
    assert done["queue_position"] is None
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["started_at"]
    assert done["completed_at"]
    assert done["cost"]["charged"] == "0.001148"
    assert done["cost"]["upstream_neurons"] == "104.36"
    output = done["output"]
    assert output["image_url"] == f"/v1/jobs/{job['id']}/image"
    assert (output["content_type"], output["width"], output["height"]) == ("image/png", 1024, 768)

    image = client.get(output["image_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert len(image.content) == output["bytes"]
    assert hashlib.sha256(image.content).hexdigest() == output["sha256"]
    assert image.headers["etag"] == f'"{output["sha256"]}"'
    assert Image.open(io.BytesIO(image.content)).size == (1024, 768)
    cached = client.get(output["image_url"], headers={"If-None-Match": image.headers["etag"]})
    assert cached.status_code == 304

    # Exactly what went upstream: multipart with the documented names, no steps for klein.
    [sent] = stack.simulator.requests_for(prompt)
    assert sent["content_type"] == "multipart/form-data"
    assert sent["fields"] == {"prompt": prompt, "width": "1024", "height": "768", "seed": "7"}
    assert sent["files"] == {}
    # One ledger row, equal to the estimate.
    assert stack.sql(
        "SELECT amount_nanos FROM charges WHERE job_id = :job_id", job_id=job["id"]
    ) == [(1_148_000,)]


@pytest.mark.parametrize(
    ("target", "content_type", "pillow"),
    [("webp", "image/webp", "WEBP"), ("jpeg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG")],
)
def test_image_format_conversion(
    client: httpx.Client, target: str, content_type: str, pillow: str
) -> None:
    job = client.post(
        "/v1/jobs", json={"prompt": unique("convert me"), "width": 512, "height": 256}
    ).json()
    done = wait_for_job(client, job["id"], statuses=FINAL)
    response = client.get(f"/v1/jobs/{job['id']}/image", params={"format": target})
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    decoded = Image.open(io.BytesIO(response.content))
    assert decoded.format == pillow
    assert decoded.size == (512, 256)
    original_etag = f'"{done["output"]["sha256"]}"'
    assert (response.headers["etag"] == original_etag) == (target == "png")


def test_multipart_submission_is_the_same_job(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("isometric city block")
    fields = {
        "prompt": prompt,
        "model": "flux-2-dev",
        "width": "512",
        "height": "512",
        "steps": "25",
        "guidance": "3.5",
        "seed": "11",
        "metadata": '{"team": "growth"}',
    }
    response = client.post("/v1/jobs", files={k: (None, v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"] == {
        "prompt": prompt,
        "width": 512,
        "height": 512,
        "seed": 11,
        "guidance": 3.5,
        "steps": 25,
        "input_images": 0,
    }
    assert job["metadata"] == {"team": "growth"}
    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded"
    assert done["cost"]["estimated"] == done["cost"]["charged"] == "0.01025"
    [sent] = stack.simulator.requests_for(prompt)
    assert sent["content_type"] == "multipart/form-data"
    assert sent["fields"] == {
        "prompt": prompt,
        "width": "512",
        "height": "512",
        "seed": "11",
        "guidance": "3.5",
        "steps": "25",
    }


@pytest.mark.parametrize(
    ("body", "estimated", "input_tiles", "output_tiles"),
    [
        ({"model": "flux-2-klein-4b"}, "0.001148", 0, 4),
        ({"model": "flux-2-klein-4b", "width": 1920, "height": 1920}, "0.004592", 0, 16),
        ({"model": "flux-2-dev", "width": 512, "height": 512}, "0.01025", 0, 1),
        ({"model": "flux-2-dev", "width": 512, "height": 512, "steps": 10}, "0.0041", 0, 1),
        ({"model": "flux-2-klein-9b", "width": 1024, "height": 1024}, "0.015", 0, 4),
        (
            {"model": "@cf/black-forest-labs/flux-2-klein-9b", "width": 1920, "height": 1088},
            "0.017",
            0,
            12,
        ),
    ],
)
def test_costs_for_every_model(
    stack: Stack,
    client: httpx.Client,
    body: dict[str, object],
    estimated: str,
    input_tiles: int,
    output_tiles: int,
) -> None:
    quote = client.post("/v1/quote", json={"prompt": "price me", **body})
    assert quote.status_code == 200, quote.text
    assert quote.json() == {
        "currency": "USD",
        "estimated": estimated,
        "charged": None,
        "input_tiles": input_tiles,
        "output_tiles": output_tiles,
        "upstream_neurons": None,
    }
    job = client.post("/v1/jobs", json={"prompt": unique("cost"), **body}).json()
    assert job["model"] in {"flux-2-klein-4b", "flux-2-klein-9b", "flux-2-dev"}
    done = wait_for_job(client, job["id"], statuses=FINAL)
    assert done["status"] == "succeeded"
    assert done["cost"]["charged"] == estimated
    [(amount,)] = stack.sql(
        "SELECT amount_nanos FROM charges WHERE job_id = :job_id", job_id=job["id"]
    )
    assert f"{amount / 1e9:.9f}".rstrip("0").rstrip(".") == estimated


def test_list_pages_newest_first_and_filters(stack: Stack) -> None:
    key = stack.create_key("lister")
    with stack.client(key) as client:
        ids = [
            client.post("/v1/jobs", json={"prompt": unique("page")}).json()["id"] for _ in range(5)
        ]
        for job_id in ids:
            wait_for_job(client, job_id, statuses=FINAL)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=params).json()
            assert page["object"] == "list"
            assert len(page["data"]) <= 2
            seen += [job["id"] for job in page["data"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        assert pages == 3
        succeeded = client.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()
        assert {job["id"] for job in succeeded["data"]} == set(ids)
        assert client.get("/v1/jobs", params={"status": "failed"}).json()["data"] == []


def test_other_keys_jobs_are_404(stack: Stack, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"prompt": unique("mine")}).json()
    wait_for_job(client, job["id"], statuses=FINAL)
    with stack.client(stack.create_key("stranger")) as stranger:
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/image"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ]:
            assert_error(stranger.request(method, path), 404, "job_not_found", "id")
        assert job["id"] not in {j["id"] for j in stranger.get("/v1/jobs").json()["data"]}
    assert_error(client.get("/v1/jobs/job_00000000000000000000000000"), 404, "job_not_found", "id")


def test_finished_job_cannot_be_canceled(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"prompt": unique("too late")}).json()
    wait_for_job(client, job["id"], statuses=FINAL)
    error = assert_error(
        client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancelable", None
    )
    assert "succeeded" in error["message"]


def test_models_list_limits_and_prices(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    assert set(models) == {"flux-2-klein-4b", "flux-2-klein-9b", "flux-2-dev"}
    klein = models["flux-2-klein-4b"]
    assert klein["upstream_id"] == "@cf/black-forest-labs/flux-2-klein-4b"
    assert klein["limits"]["width"] == {"min": 256, "max": 1920, "default": 1024, "multiple_of": 16}
    assert klein["limits"]["steps_configurable"] is False
    assert klein["pricing"]["output_unit_usd"] == "0.000287"
    assert klein["pricing"]["input_unit_usd"] == "0.000059"
    assert models["flux-2-klein-9b"]["pricing"]["output_first_unit_usd"] == "0.015"
    assert models["flux-2-klein-9b"]["pricing"]["output_unit_usd"] == "0.002"
    dev = models["flux-2-dev"]
    assert dev["pricing"]["per_step"] is True
    assert dev["pricing"]["output_unit_usd"] == "0.00041"
    assert dev["limits"]["steps"] == {"min": 1, "max": 50, "default": 25, "multiple_of": 1}


def test_health_readiness_and_docs(stack: Stack) -> None:
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert httpx.get(f"{stack.api_url}/docs").status_code == 200
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert spec["components"]["schemas"]["JobCreate"]["examples"]
    assert "/v1/jobs/{job_id}/cancel" in spec["paths"]


# ---- Idempotency-Key ---------------------------------------------------------------------


def jobs_with_prompt(stack: Stack, prompt: str) -> int:
    [(count,)] = stack.sql("SELECT count(*) FROM jobs WHERE prompt = :prompt", prompt=prompt)
    return int(count)


def test_idempotency_key_returns_the_same_job(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("exactly once")
    body = {"prompt": prompt, "width": 512, "height": 512, "seed": 3}
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # The same parameters as multipart are the same request.
    as_form = {name: (None, str(value)) for name, value in body.items()}
    assert (
        client.post("/v1/jobs", files=as_form, headers=headers).json()["id"] == first.json()["id"]
    )
    assert jobs_with_prompt(stack, prompt) == 1

    other_body = client.post("/v1/jobs", json={**body, "seed": 4}, headers=headers)
    assert_error(other_body, 422, "idempotency_key_reused", "Idempotency-Key")

    # Keys are per API key: another tenant's identical key is a different request.
    with stack.client(stack.create_key("idempotent neighbour")) as other:
        theirs = other.post("/v1/jobs", json=body, headers=headers)
        assert theirs.status_code == 202
        assert theirs.json()["id"] != first.json()["id"]
    assert jobs_with_prompt(stack, prompt) == 2


def test_concurrent_duplicates_make_one_job(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("raced")
    body = {"prompt": prompt, "width": 256, "height": 256}
    headers = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1/jobs", json=body, headers=headers), range(10))
        )
    accepted = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(accepted) == 1
    for response in responses:
        if response.status_code != 202:
            assert_error(response, 409, "idempotency_key_in_use", "Idempotency-Key")
    assert jobs_with_prompt(stack, prompt) == 1


def test_idempotency_keys_are_kept_24_hours(stack: Stack, client: httpx.Client) -> None:
    prompt = unique("a day later")
    key = f"daily-{uuid.uuid4()}"
    first = client.post(
        "/v1/jobs", json={"prompt": prompt}, headers={"Idempotency-Key": key}
    ).json()
    stack.execute(
        "UPDATE idempotency_keys SET created_at = :old WHERE key = :key",
        old=datetime.now(UTC) - timedelta(hours=25),
        key=key,
    )
    later = client.post(
        "/v1/jobs", json={"prompt": prompt}, headers={"Idempotency-Key": key}
    ).json()
    assert later["id"] != first["id"]


def test_idempotency_key_must_be_sane(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Idempotency-Key": "k" * 256})
    assert_error(response, 422, "invalid_parameter", "Idempotency-Key")

"""Submissions by a key the API process authenticated moments ago take it from memory
(app/keys/known.py): a submission is one unit of work, one connection taken from the pool, and
a key revoked meanwhile (by another process) is still refused from its next request."""

from __future__ import annotations

import json

import openai
import pytest

from tests.harness.stack import Stack
from tests.helpers import assert_error, unique

JOB = {"width": 256, "height": 256}


def test_a_submission_by_a_known_key_takes_one_connection(stack: Stack) -> None:
    with stack.client(stack.create_key("known")) as client:
        for _ in range(2):  # the first one authenticates; then the key is known
            assert (
                client.post("/v1/jobs", json={"prompt": unique("warm"), **JOB}).status_code == 202
            )
        submits = 20
        before = stack.metrics()["fluxgate_db_checkouts_total"]
        for n in range(submits):
            response = client.post("/v1/jobs", json={"prompt": unique(f"known {n}"), **JOB})
            assert response.status_code == 202, response.text
        taken = stack.metrics()["fluxgate_db_checkouts_total"] - before
    # One each (authenticating apart took two); a metrics scrape may take one or two.
    assert submits <= taken <= submits + 3, taken


def test_a_key_revoked_by_another_process_is_refused_from_its_next_submission(
    stack: Stack,
) -> None:
    key, key_id, _ = stack.create_key_with_secret("revoked-while-known")
    with stack.client(key) as client:
        assert client.post("/v1/jobs", json={"prompt": unique("before"), **JOB}).status_code == 202
        assert client.post("/v1/quote", json={"prompt": "before", **JOB}).status_code == 200

        stack.cli("keys", "revoke", key_id)

        assert_error(
            client.post("/v1/jobs", json={"prompt": unique("after"), **JOB}),
            401,
            "invalid_api_key",
            None,
        )
        assert_error(
            client.post("/v1/jobs", json={"prompt": unique("after"), **JOB}),
            401,
            "invalid_api_key",
            None,
        )
        assert_error(
            client.post("/v1/quote", json={"prompt": "after", **JOB}), 401, "invalid_api_key", None
        )
        assert client.get("/v1/jobs").status_code == 401
    oai = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        oai.images.generate(prompt=unique("after"), size="256x256")
    # Nothing it sent after the revocation was stored.
    prompts = [
        row[0] for row in stack.sql("SELECT prompt FROM jobs WHERE api_key_id = :id", id=key_id)
    ]
    assert len(prompts) == 1, json.dumps(prompts)
    assert prompts[0].startswith("before")

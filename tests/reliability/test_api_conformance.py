"""The OpenAPI description says what the API does: every status each operation returns is
declared with the envelope it comes in, and Schemathesis, fuzzing every operation from the
description (examples, boundary coverage, random data, stateful sequences), finds no server
error and no answer the description does not allow, with a normal key and with an admin key.

Bounded for CI: a fixed number of examples per operation and a fixed seed. Keys are not
revoked (DELETE is left out): revocation is tested on throwaway keys elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.harness.stack import Stack, running_gateway

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
MAX_EXAMPLES = os.environ.get("FLUXGATE_TEST_FUZZ_EXAMPLES", "12")


def test_the_description_is_valid_openapi_and_declares_every_error(stack: Stack) -> None:
    schema = httpx.get(f"{stack.api_url}/openapi.json").json()
    validate(schema)
    jobs = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert {
        "202",
        "400",
        "401",
        "402",
        "408",
        "409",
        "413",
        "415",
        "422",
        "429",
        "431",
        "503",
    } <= set(jobs)
    assert jobs["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    admin = schema["paths"]["/v1/admin/keys/{key_id}"]["delete"]["responses"]
    assert {"401", "403", "404", "409"} <= set(admin)
    openai = schema["paths"]["/v1/images/generations"]["post"]["responses"]
    assert openai["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "OpenAIErrorBody"
    )
    events = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert set(events["content"]) == {"text/event-stream"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def fuzzed(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway of its own: the admin run changes whatever keys it finds."""
    with running_gateway(log_dir, backend=request.param, latency=0.05, worker=True) as gateway:
        yield gateway


@pytest.mark.parametrize("role", ["normal", "admin"])
def test_schemathesis_finds_no_server_error_and_no_violation(
    fuzzed: Stack, tmp_path: Path, role: str
) -> None:
    stack = fuzzed
    key = stack.create_key(f"fuzz {role}", *(["--admin"] if role == "admin" else []))
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{stack.api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            MAX_EXAMPLES,
            "--exclude-method",
            "DELETE",
            "--seed",
            "20261129",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = "\n".join(result.stdout.splitlines()[-60:])
    print(summary)
    assert result.returncode == 0, summary

"""Hostile input, class by class: text that is not valid Unicode (lone surrogates) or holds NUL,
wherever a client can put it; JSON nested or sized to hurt; numbers past every maximum; blank
prompts, invalid UTF-8 and repeated fields. Each is a clear 4xx in the envelope, never a 500,
and nothing is written when the answer is not a success. Both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness.stack import Stack
from tests.helpers import assert_error, unique

SURROGATE = "\\udfff"  # a JSON escape: Python's json would decode it to a lone surrogate
NUL = "\\u0000"


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("hostile-admin", "--admin")) as http:
        yield http


def raw_json(client: httpx.Client, method: str, path: str, text: str) -> httpx.Response:
    """Send ``text`` as the JSON body byte for byte (escapes and all)."""
    return client.request(
        method, path, content=text.encode(), headers={"Content-Type": "application/json"}
    )


def rows(stack: Stack) -> dict[str, int]:
    """How many rows the tables a request could write hold now."""
    tables = ("jobs", "job_images", "api_keys", "prices", "idempotency_keys", "charges")
    return {table: int(stack.sql(f"SELECT count(*) FROM {table}")[0][0]) for table in tables}  # noqa: S608


def assert_refused_without_writes(
    stack: Stack, send: Any, status: int, code: str, param: str | None
) -> None:
    before = rows(stack)
    assert_error(send(), status, code, param)
    assert rows(stack) == before


JOB = '{{"prompt": {prompt}, "width": 512, "height": 512{extra}}}'


def job_body(prompt: str = '"a harbour"', extra: str = "") -> str:
    return JOB.format(prompt=prompt, extra=extra)


BAD_JOB_TEXT = [
    # (body, param): every text field of a job, with a lone surrogate and with NUL
    *[(job_body(f'"ab{bad}"'), "prompt") for bad in (SURROGATE, NUL)],
    *[(job_body(extra=f', "metadata": {{"k": "v{bad}"}}'), "metadata") for bad in (SURROGATE, NUL)],
    *[(job_body(extra=f', "metadata": {{"k{bad}": "v"}}'), "metadata") for bad in (SURROGATE, NUL)],
    *[(job_body(extra=f', "model": "flux{bad}"'), "model") for bad in (SURROGATE, NUL)],
    *[
        (job_body(extra=f', "webhook_url": "https://example.com/{bad}"'), "webhook_url")
        for bad in (SURROGATE, NUL)
    ],
    (job_body(extra=f', "input_images": ["{SURROGATE}"]'), "input_images"),
    (f'{{"prompt": "x", "k{SURROGATE}": 1}}', None),  # an unknown field's name
]


@pytest.mark.parametrize(("body", "param"), BAD_JOB_TEXT)
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/quote"])
def test_text_that_is_not_unicode_or_holds_nul_is_refused_before_any_write(
    stack: Stack, client: httpx.Client, path: str, body: str, param: str | None
) -> None:
    assert_refused_without_writes(
        stack, lambda: raw_json(client, "POST", path, body), 422, "invalid_text", param
    )


def test_a_lone_surrogate_in_metadata_no_longer_accepts_and_charges_the_job(
    stack: Stack, client: httpx.Client
) -> None:
    """The probe's first find: the job was committed, run and charged, the client was told
    500, and the key's job list answered 500 from then on."""
    prompt = unique("surrogate")
    body = job_body(json.dumps(prompt), f', "metadata": {{"k": "{SURROGATE}"}}')
    assert_refused_without_writes(
        stack, lambda: raw_json(client, "POST", "/v1/jobs", body), 422, "invalid_text", "metadata"
    )
    assert client.get("/v1/jobs").status_code == 200
    assert stack.simulator.count(prompt) == 0


def test_openai_prompts_hold_to_the_text_rule(stack: Stack, client: httpx.Client) -> None:
    for bad in (SURROGATE, NUL):
        before = rows(stack)
        response = raw_json(client, "POST", "/v1/images/generations", f'{{"prompt": "a{bad}"}}')
        assert response.status_code == 400, response.text  # OpenAI's shape: invalid is 400
        assert response.json()["error"]["param"] == "prompt"
        assert rows(stack) == before


def test_key_names_hold_to_the_text_rule(stack: Stack, admin: httpx.Client) -> None:
    for bad in (SURROGATE, NUL):
        assert_refused_without_writes(
            stack,
            lambda bad=bad: raw_json(admin, "POST", "/v1/admin/keys", f'{{"name": "a{bad}"}}'),
            422,
            "invalid_text",
            "name",
        )
    key_id = admin.post("/v1/admin/keys", json={"name": "renamed later"}).json()["id"]
    assert_error(
        raw_json(admin, "PATCH", f"/v1/admin/keys/{key_id}", f'{{"name": "b{NUL}"}}'),
        422,
        "invalid_text",
        "name",
    )
    assert admin.get(f"/v1/admin/keys/{key_id}").json()["name"] == "renamed later"


def test_multipart_text_must_be_utf8_without_nul(stack: Stack, client: httpx.Client) -> None:
    cases = [
        ({"prompt": b"caf\xe9 au lait"}, "prompt"),  # Latin-1, not UTF-8
        ({"prompt": b"a\x00b"}, "prompt"),
        ({"prompt": b"ok", "metadata": b'{"k": "\\udfff"}'}, "metadata"),
        ({"prompt": b"ok", "metadata": b'{"k": "\xff"}'}, "metadata"),
    ]
    for fields, param in cases:
        files = {name: (None, value) for name, value in fields.items()}
        assert_refused_without_writes(
            stack,
            lambda files=files: client.post("/v1/jobs", files=files),
            422,
            "invalid_text",
            param,
        )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/job_%00abc",
        "/v1/jobs/job_%00abc/image",
        "/v1/jobs/job_%00abc/events",
        "/v1/jobs/job_%00abc/deliveries",
        "/v1/images/shared/tok%00en",
    ],
)
def test_a_path_id_that_cannot_exist_is_a_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "error" in response.json()


@pytest.mark.parametrize("path", ["/v1/jobs/", "/v1/jobs/%2F", "/v1/models/", "/v1/usage/%2F"])
def test_a_trailing_or_encoded_slash_is_a_404_not_a_redirect(
    client: httpx.Client, path: str
) -> None:
    assert_error(client.get(path), 404, "not_found", None)


def test_the_dashboard_with_a_trailing_slash_leads_to_it(client: httpx.Client) -> None:
    answer = client.get("/admin/")
    assert answer.status_code == 308
    assert answer.headers["location"] == "/admin"


def test_nul_in_a_path_or_query_is_never_a_500(
    stack: Stack, client: httpx.Client, admin: httpx.Client
) -> None:
    assert client.post("/v1/jobs/job_%00abc/cancel").status_code == 404
    for path in ("/v1/admin/keys/key_%00x", "/v1/admin/webhook-deliveries/whd_%00x"):
        assert admin.get(path).status_code == 404
    assert admin.patch("/v1/admin/keys/key_%00x", json={"name": "x"}).status_code == 404
    assert admin.delete("/v1/admin/keys/key_%00x").status_code == 404
    for path, param in [
        ("/v1/admin/usage?key_id=a%00b", "key_id"),
        ("/v1/jobs?status=queued%00", "status"),
        ("/v1/jobs?cursor=job_%00", "cursor"),
        ("/v1/usage?from=2026-01-01%00", "from"),
        ("/v1/models?x%00=1", "x\x00"),
    ]:
        http = admin if "/admin/" in path else client
        assert_error(http.get(path), 422, "invalid_text", param)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("POST", "/v1/quote"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/admin/keys"),
        ("POST", "/v1/admin/prices"),
        ("PATCH", "/v1/admin/keys/key_00000000000000000000000000"),
    ],
)
def test_json_nesting_and_size_are_bounded_everywhere(
    stack: Stack, admin: httpx.Client, method: str, path: str
) -> None:
    for body in (
        deep(1000),  # the probe's RecursionError
        deep(100_000),
        '{"prompt": "x", "metadata": ' + deep(40) + "}",  # past the 32 levels allowed
        "[" + ",".join(["0"] * 100_002) + "]",  # a value count that would be a big list
        '{"prompt": NaN}',
        '{"a": 1e999999}',
    ):
        before = rows(stack)
        response = raw_json(admin, method, path, body)
        assert response.status_code == 400, (body[:40], response.text)
        assert rows(stack) == before


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/v1/jobs", '{"prompt": "x", "prompt": "y"}', "prompt"),
        ("POST", "/v1/quote", '{"prompt": "x", "width": 512, "width": 768}', "width"),
        ("POST", "/v1/admin/keys", '{"name": "a", "name": "b"}', "name"),
        ("POST", "/v1/jobs", '{"prompt": "x", "metadata": {"k": "1", "k": "2"}}', "k"),
    ],
)
def test_duplicate_json_keys_are_refused(
    stack: Stack, admin: httpx.Client, method: str, path: str, body: str, param: str
) -> None:
    assert_refused_without_writes(
        stack,
        lambda: raw_json(admin, method, path, body),
        422,
        "duplicate_parameter",
        param,
    )


@pytest.mark.parametrize("prompt", [" ", "   \t\n ", "\u3000\u2003"])
def test_a_prompt_of_whitespace_is_refused_at_submit(
    stack: Stack, client: httpx.Client, prompt: str
) -> None:
    for send in (
        lambda: client.post("/v1/jobs", json={"prompt": prompt}),
        lambda: client.post("/v1/jobs", files={"prompt": (None, prompt.encode())}),
        lambda: client.post("/v1/quote", json={"prompt": prompt}),
    ):
        assert_refused_without_writes(stack, send, 422, "invalid_parameter", "prompt")
    response = client.post("/v1/images/generations", json={"prompt": prompt})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("method", "path_of", "body", "param"),
    [
        ("PATCH", "key", {"budget_usd": 1e10}, "budget_usd"),
        ("PATCH", "key", {"budget_usd": "1000000000.000000001"}, "budget_usd"),
        ("PATCH", "key", {"budget_usd": "-1e30"}, "budget_usd"),
        ("PATCH", "key", {"rate_limit_per_minute": 10**12}, "rate_limit_per_minute"),
        ("PATCH", "key", {"max_concurrent_jobs": 2**31}, "max_concurrent_jobs"),
        ("POST", "keys", {"name": "n", "budget_usd": "1e19"}, "budget_usd"),
        ("POST", "keys", {"name": "n", "rate_limit_per_minute": 10**30}, "rate_limit_per_minute"),
        ("POST", "rotate", {"grace_seconds": 10**20}, "grace_seconds"),
    ],
)
def test_money_and_counts_have_a_maximum(
    stack: Stack,
    admin: httpx.Client,
    method: str,
    path_of: str,
    body: dict[str, Any],
    param: str,
) -> None:
    key_id = admin.post("/v1/admin/keys", json={"name": "bounded"}).json()["id"]
    path = {
        "key": f"/v1/admin/keys/{key_id}",
        "keys": "/v1/admin/keys",
        "rotate": f"/v1/admin/keys/{key_id}/webhook-secret",
    }[path_of]
    before = admin.get(f"/v1/admin/keys/{key_id}").json()
    assert_refused_without_writes(
        stack, lambda: admin.request(method, path, json=body), 422, "invalid_parameter", param
    )
    assert admin.get(f"/v1/admin/keys/{key_id}").json() == before


PRICE = {
    "model": "flux-2-dev",
    "effective_from": "2031-01-01T00:00:00Z",
    "output_unit_usd": "0.0004",
    "input_unit_usd": "0.0002",
}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"output_unit_usd": "1e12"}, "output_unit_usd"),
        ({"input_unit_usd": "10.000000001"}, "input_unit_usd"),
        ({"output_first_unit_usd": "99999999999999999999"}, "output_first_unit_usd"),
        ({"effective_from": "0001-01-01T00:00:00+05:00"}, "effective_from"),
        ({"effective_from": "9999-12-31T23:59:59-05:00"}, "effective_from"),
    ],
)
def test_prices_and_times_have_bounds(
    stack: Stack, admin: httpx.Client, change: dict[str, str], param: str
) -> None:
    assert_refused_without_writes(
        stack,
        lambda: admin.post("/v1/admin/prices", json={**PRICE, **change}),
        422,
        "invalid_parameter",
        param,
    )


@pytest.mark.parametrize(
    "query", ["from=0001-01-01T00:00:00%2B05:00", "to=9999-12-31T23:59:59-05:00"]
)
def test_usage_times_out_of_range_are_422(admin: httpx.Client, query: str) -> None:
    response = admin.get(f"/v1/admin/usage?{query}")
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--budget-usd", "1e20"], "--budget-usd"),
        (["--rate-limit", str(10**12)], "--rate-limit"),
        (["--max-concurrent", "0"], "--max-concurrent"),
    ],
)
def test_the_cli_holds_keys_to_the_same_maximums(stack: Stack, args: list[str], flag: str) -> None:
    before = rows(stack)
    result = stack.cli("keys", "create", "--name", "cli", *args, check=False)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"fluxgate: {flag}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert rows(stack) == before

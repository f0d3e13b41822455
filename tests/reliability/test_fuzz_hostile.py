"""A bounded fuzz of the hostile-input classes with Hypothesis: bodies whose fields hold any
Unicode (lone surrogates and NUL included), any number and any nesting; multipart fields of
any bytes; paths and queries of any bytes. The answer is never a 5xx, always the envelope, and
a refused request writes nothing. Both backends."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.text import text_problem
from tests.harness.stack import Stack

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every code point, surrogates and controls included, and often the ones that hurt.
HOSTILE = st.sampled_from(["\x00", "\udfff", "\ud800", "\ufffe", "\u202e", "\x1b"])
ANY_TEXT = st.text(st.one_of(st.characters(exclude_categories=()), HOSTILE), max_size=40)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 16, 512, 1024, 1920, 4294967295, 4294967296]),
)
SCALARS = st.one_of(ANY_TEXT, NUMBERS, st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["model", "prompt", "width", "height", "seed", "guidance", "steps", "metadata"]
JOB_BODIES = st.fixed_dictionaries(
    {"prompt": st.one_of(ANY_TEXT, VALUES)},
    optional={
        # Mostly valid sizes, so that the text reaches the rules it must meet.
        "width": st.one_of(st.just(512), VALUES),
        "height": st.one_of(st.just(512), VALUES),
        **{name: VALUES for name in FIELDS if name not in ("prompt", "width", "height")},
        "webhook_url": st.one_of(ANY_TEXT, st.just("https://127.0.0.1/hook")),
        "metadata": st.dictionaries(ANY_TEXT, st.one_of(ANY_TEXT, VALUES), max_size=5),
    },
)


def job_count(stack: Stack) -> int:
    return int(stack.sql("SELECT count(*) FROM jobs")[0][0])


def assert_answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"}, body
    return body


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/quote"])
@FUZZ
@given(body=JOB_BODIES)
def test_any_json_job_body(
    stack: Stack, client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    # ASCII JSON: lone surrogates travel as \\udXXX escapes, as a hostile client sends them.
    content = json.dumps(body, ensure_ascii=True).encode()
    before = job_count(stack)
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    answer = assert_answer(response)
    created = job_count(stack) - before
    assert created == (1 if path == "/v1/jobs" and response.status_code == 202 else 0), answer


def place(target: str, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "a harbour at dawn", "width": 512, "height": 512}
    if target == "metadata value":
        body["metadata"] = {"k": text}
    elif target == "metadata key":
        body["metadata"] = {text: "v"}
    elif target == "unknown field":
        body[text] = 1
    else:
        body[target] = text
    return body


TARGETS = ["prompt", "metadata value", "metadata key", "model", "webhook_url", "unknown field"]


@FUZZ
@given(target=st.sampled_from(TARGETS), text=ANY_TEXT)
def test_any_text_in_any_field(stack: Stack, client: httpx.Client, target: str, text: str) -> None:
    """One field at a time, the rest valid: whatever the text, the answer is a 202 or a 4xx,
    and text that is not Unicode or holds NUL is always refused as such."""
    content = json.dumps(place(target, text), ensure_ascii=True).encode()
    before = job_count(stack)
    response = client.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    answer = assert_answer(response)
    if text_problem(text) is not None:
        assert response.status_code == 422, answer
        assert answer["error"]["code"] == "invalid_text", answer
    assert job_count(stack) - before == (1 if response.status_code == 202 else 0)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(FIELDS), st.binary(max_size=40), min_size=1))
def test_any_multipart_job_body(
    stack: Stack, client: httpx.Client, fields: dict[str, bytes]
) -> None:
    before = job_count(stack)
    response = client.post(
        "/v1/jobs", files={name: (None, value) for name, value in fields.items()}
    )
    assert_answer(response)
    assert job_count(stack) - before == (1 if response.status_code == 202 else 0)


PATHS = [
    "/v1/jobs/{}",
    "/v1/jobs/{}/image",
    "/v1/jobs?status={}",
    "/v1/jobs?cursor={}&limit=5",
    "/v1/usage?from={}",
    "/v1/usage?to={}&group_by=model",
    "/v1/images/shared/{}",
    "/v1/models?{}=1",
]


@FUZZ
@given(template=st.sampled_from(PATHS), raw=st.binary(min_size=1, max_size=40))
def test_any_path_or_query(client: httpx.Client, template: str, raw: bytes) -> None:
    url = template.format(quote_from_bytes(raw, safe=""))
    assert_answer(client.get(url))

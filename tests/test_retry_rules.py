"""Retry decisions: which upstream failures are retried, Retry-After, and the backoff."""

from __future__ import annotations

import random

import pytest

from app.jobs.execution import backoff_seconds
from app.upstream.workers_ai import (
    FINAL_CODES,
    RETRYABLE_CODES,
    classify_failure,
    parse_retry_after,
)


@pytest.mark.parametrize("code", [3007, 3008, 3021, 3040])
def test_retryable_upstream_codes(code: int) -> None:
    status = 408 if code in (3007, 3008) else 429
    body = {"success": False, "errors": [{"code": code, "message": "m"}]}
    error = classify_failure(status, body, retry_after=None, duration_ms=1)
    assert error.retryable
    assert error.upstream_code == code


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (5007, 400),
        (5004, 400),
        (3003, 400),
        (3023, 403),
        (3041, 403),
        (3042, 404),
        (3006, 413),
        (3036, 429),
    ],
)
def test_final_upstream_codes(code: int, status: int) -> None:
    body = {"success": False, "errors": [{"code": code, "message": "m"}]}
    error = classify_failure(status, body, retry_after=None, duration_ms=1)
    assert not error.retryable
    assert error.upstream_code == code


def test_every_documented_code_is_classified() -> None:
    documented = {5007, 5004, 3003, 3023, 3041, 3042, 3006, 3007, 3008, 3036, 3040, 3021}
    assert documented == RETRYABLE_CODES | FINAL_CODES
    assert not RETRYABLE_CODES & FINAL_CODES


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (401, False),
        (404, False),
    ],
)
def test_unknown_codes_follow_the_http_status(status: int, retryable: bool) -> None:
    assert classify_failure(status, None, retry_after=None, duration_ms=1).retryable is retryable


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            429,
            {"errors": [{"code": 3040, "message": "Capacity temporarily exceeded."}]},
            'Workers AI was out of capacity (error 3040: "Capacity temporarily exceeded.")',
        ),
        (
            400,
            {
                "errors": [
                    {
                        "code": 5004,
                        "message": "cannot identify image file <_io.BytesIO object at 0x7f3a9c>\n",
                    }
                ]
            },
            "Workers AI refused the request as invalid "
            '(error 5004: "cannot identify image file (an object)")',
        ),
        (502, None, "Workers AI failed (HTTP 502)"),
        (
            418,
            {"errors": [{"code": "x", "message": {"nested": 1}}]},
            "Workers AI refused the request (HTTP 418)",
        ),
    ],
)
def test_upstream_errors_are_described_in_our_words(
    status: int, body: object, expected: str
) -> None:
    error = classify_failure(status, body, retry_after=None, duration_ms=1)
    assert error.message == expected


def test_their_words_are_kept_short() -> None:
    body = {"errors": [{"code": 3006, "message": "x" * 5000}]}
    message = classify_failure(413, body, retry_after=None, duration_ms=1).message
    assert len(message) < 400
    assert message.endswith('..."' + ")")


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(
        10.0
    )


def test_backoff_grows_is_capped_jittered_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_seconds(n, base=1, cap=30, retry_after=None, rng=rng) for n in range(1, 9)]
    for attempt, delay in enumerate(delays, start=1):
        step = min(30, 2 ** (attempt - 1))
        assert step / 2 <= delay <= step
    assert len({round(d, 6) for d in delays}) == len(delays)
    assert backoff_seconds(1, base=1, cap=30, retry_after=12, rng=rng) >= 12
    assert backoff_seconds(1, base=1, cap=30, retry_after=999, rng=rng) <= 30.1

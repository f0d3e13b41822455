"""Pure rules: money, tiles and prices, retry decisions, ids, settings."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.billing.rules import PriceSchedule, job_cost, megapixels, tiles
from app.core.db import make_engine, with_transaction
from app.core.ids import new_id
from app.core.money import MAX_BUDGET_NANOS, format_usd, parse_usd
from app.core.settings import ConfigError, Settings, load_settings
from app.jobs.execution import backoff_seconds
from app.upstream.workers_ai import (
    FINAL_CODES,
    RETRYABLE_CODES,
    classify_failure,
    parse_retry_after,
)

KLEIN_4B = PriceSchedule("flux-2-klein-4b", "tile", "tile", False, 287_000, 287_000, 59_000)
KLEIN_9B = PriceSchedule(
    "flux-2-klein-9b", "megapixel", "megapixel", False, 15_000_000, 2_000_000, 2_000_000
)
DEV = PriceSchedule("flux-2-dev", "tile", "tile", True, 410_000, 410_000, 210_000)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (1_148_000, "0.001148"),
        (10_250_000, "0.01025"),
        (1_000_000_000, "1"),
        (12_500_000_000, "12.5"),
        (-59_000, "-0.000059"),
    ],
)
def test_money_round_trips_exactly(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text
    assert parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS) == nanos


@pytest.mark.parametrize("text", ["0.0000000001", "abc", "NaN", "Infinity", ""])
def test_money_refuses_what_is_not_nano_exact(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a decimal|not a finite|more than 9 decimal"):
        parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS)


@pytest.mark.parametrize("text", ["1000000000.000000001", "-1000000001", "1e10", "1e400"])
def test_money_refuses_what_is_past_its_maximum(text: str) -> None:
    assert parse_usd("1000000000", maximum_nanos=MAX_BUDGET_NANOS) == MAX_BUDGET_NANOS
    with pytest.raises(ValueError, match="at most 1000000000 USD"):
        parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS)


def test_tile_and_megapixel_rule() -> None:
    assert tiles(1024, 768) == 4
    assert tiles(512, 512) == 1
    assert tiles(513, 512) == 2
    assert tiles(1920, 1920) == 16
    assert megapixels(1024, 1024) == 1
    assert megapixels(1024, 1040) == 2
    assert megapixels(1920, 1080) == 2
    assert megapixels(256, 256) == 1


def test_contract_examples() -> None:
    assert format_usd(job_cost(KLEIN_4B, width=1024, height=768, steps=4).total_nanos) == "0.001148"
    assert format_usd(job_cost(DEV, width=512, height=512, steps=25).total_nanos) == "0.01025"
    two_inputs = job_cost(
        KLEIN_4B, width=1024, height=768, steps=4, input_sizes=[(512, 512), (300, 400)]
    )
    assert format_usd(two_inputs.total_nanos) == "0.001266"
    assert (two_inputs.input_tiles, two_inputs.output_tiles) == (2, 4)


def test_klein_9b_bills_first_and_further_megapixels() -> None:
    assert job_cost(KLEIN_9B, width=1024, height=1024, steps=4).total_nanos == 15_000_000
    assert job_cost(KLEIN_9B, width=1920, height=1080, steps=4).total_nanos == 17_000_000
    assert job_cost(KLEIN_9B, width=1920, height=1920, steps=4).total_nanos == 21_000_000
    with_input = job_cost(KLEIN_9B, width=1024, height=1024, steps=4, input_sizes=[(512, 512)])
    assert with_input.total_nanos == 17_000_000


def test_dev_multiplies_inputs_and_outputs_by_steps() -> None:
    cost = job_cost(DEV, width=1024, height=1024, steps=10, input_sizes=[(512, 512)])
    assert cost.total_nanos == (4 * 410_000 + 210_000) * 10


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


def test_ids_sort_by_creation() -> None:
    ids = [new_id("job") for _ in range(50)]
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == 50
    first = new_id("job")
    time.sleep(0.002)
    assert new_id("job") > first


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key in list(os.environ):
        if key.startswith("FLUXGATE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"FLUXGATE_{key}", value)
    return load_settings()


def test_settings_accept_plain_postgres_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, DATABASE_URL="postgresql://u@h/db", REDIS_URL="redis://h/0")
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.effective_broker_url == "redis://h/0"
    assert settings.cf_base_url == "https://api.cloudflare.com/client/v4"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "FLUXGATE_DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x/y", "REDIS_URL": "redis://h"}, "FLUXGATE_DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h/d"}, "FLUXGATE_BROKER_URL or FLUXGATE_REDIS_URL"),
        (
            {"DATABASE_URL": "postgresql://h/d", "REDIS_URL": "redis://h", "CF_ACCOUNT_ID": "a"},
            "CF_API_TOKEN",
        ),
        (
            {
                "DATABASE_URL": "postgresql://h/d",
                "REDIS_URL": "redis://h",
                "UPSTREAM_MAX_ATTEMPTS": "0",
            },
            "FLUXGATE_UPSTREAM_MAX_ATTEMPTS",
        ),
        (
            {
                "DATABASE_URL": "postgresql://h/d",
                "REDIS_URL": "redis://h",
                "JOB_LEASE_SECONDS": "30",
            },
            "FLUXGATE_JOB_LEASE_SECONDS",
        ),
    ],
)
def test_bad_settings_fail_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(monkeypatch, **env)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def fluxgate_with(command: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run ``fluxgate COMMAND`` with only the given FLUXGATE_* settings."""
    env = {"PATH": "/usr/bin:/bin", **{f"FLUXGATE_{k.upper()}": v for k, v in settings.items()}}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_stops_with_one_clear_line_on_bad_config() -> None:
    result = fluxgate_with("migrate", database_url="oracle://nope", redis_url="redis://h")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "fluxgate: invalid configuration: "
        "FLUXGATE_DATABASE_URL: must be a postgresql:// or sqlite:/// URL"
    ]


def test_worker_refuses_to_start_without_credentials() -> None:
    result = fluxgate_with("worker", database_url="postgresql://h/d", redis_url="redis://h")
    assert result.returncode == 2
    assert "FLUXGATE_CF_ACCOUNT_ID and FLUXGATE_CF_API_TOKEN are required" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["migrate", "--help"],
        ["api", "--help"],
        ["worker", "--help"],
        ["beat", "--help"],
        ["simulate-upstream", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "list", "--help"],
        ["keys", "update", "--help"],
        ["keys", "revoke", "--help"],
        ["prices", "add", "--help"],
        ["prices", "list", "--help"],
        ["dev", "--help"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "usage: fluxgate" in result.stdout


def test_with_transaction_retries_when_the_database_is_briefly_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'retry.db'}")
    sessions = sessionmaker(bind=engine)
    calls = []

    def work(session: Session) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("too many clients already"))
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    assert with_transaction(work, backoff_seconds=0.001, sessions=sessions) == 42
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(OperationalError):
        # A deadline that leaves room for one retry, not two.
        with_transaction(
            work, until=time.monotonic() + 0.15, backoff_seconds=0.1, sessions=sessions
        )
    assert len(calls) == 2


@pytest.mark.parametrize("token", ["-starts-with-a-dash", "--looks-like-an-option", "plain_token"])
def test_dev_passes_any_random_simulator_token_intact(token: str) -> None:
    from app.cli.commands import build_parser
    from app.cli.dev import simulator_arguments

    args = build_parser().parse_args(simulator_arguments(8787, token, 0.5))
    assert args.token == token
    assert args.port == 8787

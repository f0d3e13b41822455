"""Settings: what they accept, and one clear line for what they refuse, from the CLI too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.core.settings import ConfigError, Settings, load_settings


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

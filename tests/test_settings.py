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


BASE = {"DATABASE_URL": "postgresql://h/d", "REDIS_URL": "redis://h"}


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        # .env.example copied verbatim: the credentials' lines are there, empty.
        ("CF_ACCOUNT_ID", "", "fill it in, or remove it to leave it unset"),
        ("CF_API_TOKEN", "   ", "fill it in, or remove it to leave it unset"),
        ("DATABASE_URL", " ", "is empty; it must be set"),
        ("REDIS_URL", "", "is set but empty"),
        ("BROKER_URL", "\t", "is set but empty"),
        ("CF_BASE_URL", "", "is set but empty"),
        ("PUBLIC_URL", "", "is set but empty"),
        ("UPSTREAM_TIMEOUT_SECONDS", "", "to use the default (120.0)"),
        ("LOG_LEVEL", " ", "to use the default (INFO)"),
    ],
)
def test_empty_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    env = {**BASE, "CF_ACCOUNT_ID": "account", "CF_API_TOKEN": "token", name: value}
    with pytest.raises(ConfigError) as caught:
        _settings(monkeypatch, **env)
    message = str(caught.value)
    assert message.startswith(f"invalid configuration: FLUXGATE_{name}: ")
    assert fragment in message
    assert "\n" not in message


def test_settings_that_mean_something_empty_may_be_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    settings = _settings(monkeypatch, **BASE, WEBHOOK_ALLOWED_NETWORKS="")
    assert settings.webhook_networks == ()
    assert settings.otel_exporter_otlp_endpoint is None


def test_credentials_and_urls_lose_stray_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        DATABASE_URL="postgresql://h/d",
        REDIS_URL=" redis://h/0 ",
        CF_ACCOUNT_ID=" account\n",
        CF_API_TOKEN="token \n",
        PUBLIC_URL=" https://fluxgate.example.com/ ",
    )
    assert (settings.cf_account_id, settings.cf_api_token) == ("account", "token")
    assert settings.redis_url == "redis://h/0"
    assert settings.public_url == "https://fluxgate.example.com"


@pytest.mark.parametrize(
    "value", ["fluxgate.example.com", "ftp://fluxgate.example.com", "https://", "https://h/?a=1"]
)
def test_public_url_must_be_a_plain_http_url(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ConfigError, match="FLUXGATE_PUBLIC_URL: must be"):
        _settings(monkeypatch, **BASE, PUBLIC_URL=value)


def test_an_env_file_copied_unfilled_stops_start_up_with_one_line() -> None:
    result = fluxgate_with("api", **BASE, cf_account_id="", cf_api_token="")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "fluxgate: invalid configuration: "
        "FLUXGATE_CF_ACCOUNT_ID: is set but empty; fill it in, or remove it to leave it unset; "
        "FLUXGATE_CF_API_TOKEN: is set but empty; fill it in, or remove it to leave it unset"
    ]

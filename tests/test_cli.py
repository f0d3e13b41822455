"""The command line: every command's help, the arguments `fluxgate dev` builds, and the admin
commands against a database named by FLUXGATE_DATABASE_URL with no broker set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import FLUXGATE
from tests.harness.stack import Stack
from tests.helpers import FINAL, submit, wait_for_job


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
        ["usage", "--help"],
        ["jobs", "list", "--help"],
        ["jobs", "show", "--help"],
        ["dev", "--help"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "usage: fluxgate" in result.stdout


@pytest.mark.parametrize("token", ["-starts-with-a-dash", "--looks-like-an-option", "plain_token"])
def test_dev_passes_any_random_simulator_token_intact(token: str) -> None:
    from app.cli.commands import build_parser
    from app.cli.dev import simulator_arguments

    args = build_parser().parse_args(simulator_arguments(8787, token, 0.5))
    assert args.token == token
    assert args.port == 8787


def test_the_usage_command_offers_every_grouping_of_the_reports() -> None:
    from app.billing.usage import GROUP_BYS
    from app.cli.commands import USAGE_GROUP_BYS

    assert USAGE_GROUP_BYS == GROUP_BYS


def test_admin_commands_need_only_the_database(stack: Stack, api_key: str, tmp_path: Path) -> None:
    """The README's own-servers flow: FLUXGATE_DATABASE_URL names the database (over a
    ./.fluxgate in the folder), and no broker setting is asked for."""
    env = {
        name: value
        for name, value in stack.env.items()
        if name not in ("FLUXGATE_REDIS_URL", "FLUXGATE_BROKER_URL")
    }
    (tmp_path / ".fluxgate").mkdir()  # a dev's folder, but the environment names a database

    def run(*args: str) -> Any:
        done = subprocess.run(
            [*FLUXGATE, *args, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    with stack.client(api_key) as client:
        job_id = submit(client, "cli without a broker")
        assert wait_for_job(client, job_id, statuses=FINAL)["status"] == "succeeded"
    admin = stack.create_key("cli admin", "--admin")
    window = {"from": "2000-01-01", "to": "2100-01-01"}
    with stack.client(admin) as http:
        api_usage = http.get("/v1/admin/usage", params={**window, "group_by": "key"}).json()
        api_job = http.get("/v1/admin/jobs", params={"id": job_id}).json()["data"][0]
        api_keys = http.get("/v1/admin/keys").json()["data"]
    cli_usage = run("usage", "--from", window["from"], "--to", window["to"], "--group-by", "key")
    assert cli_usage == api_usage
    assert run("jobs", "show", job_id) == api_job
    listed = {row["id"]: row for row in run("keys", "list")}
    assert {key["id"] for key in api_keys} <= set(listed)
    for key in api_keys:
        assert listed[key["id"]]["budget_used_usd"] == key["budget_used_usd"]

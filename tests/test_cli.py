"""The command line: every command's help, and the arguments `fluxgate dev` builds."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


@pytest.mark.parametrize("token", ["-starts-with-a-dash", "--looks-like-an-option", "plain_token"])
def test_dev_passes_any_random_simulator_token_intact(token: str) -> None:
    from app.cli.commands import build_parser
    from app.cli.dev import simulator_arguments

    args = build_parser().parse_args(simulator_arguments(8787, token, 0.5))
    assert args.token == token
    assert args.port == 8787

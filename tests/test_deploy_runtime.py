"""What the deployment files rely on in the processes themselves, run for real: secrets read as
files from a secrets folder (Docker's and Kubernetes' /run/secrets), and the heartbeat files the
healthchecks of workers and beat look at."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness.processes import FLUXGATE, ROOT, answers, free_port, wait_until
from tests.harness.stack import SIM_TOKEN, Stack
from tests.helpers import submit, unique, wait_for_job

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# A password that must be quoted in a URL: it reaches PostgreSQL only if merged in right.
PASSWORD = "p@ss:w/rd%?# x"


@pytest.fixture
def stack(log_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir, backend="postgres")
    try:
        yield stack
    finally:
        stack.close()


def secrets_folder(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, value in files.items():
        # As an operator writes them: a trailing newline, which is not part of the value.
        (path / name).write_text(value + "\n")
    return path


def test_a_worker_takes_its_token_and_database_password_from_secret_files(
    stack: Stack, tmp_path: Path
) -> None:
    """The worker's environment has a database URL without a password and no token; the files
    give both. The simulator refuses any other token, so the job succeeds only if the file's
    was sent. (The test server trusts local connections, so the password is not checked there,
    but one merged in unquoted would break the URL: it has @, :, / and # in it.)"""
    folder = secrets_folder(
        tmp_path / "secrets",
        # Either case: Docker's target names are lower case, a variable's name is upper.
        fluxgate_database_password=PASSWORD,
        FLUXGATE_CF_API_TOKEN=SIM_TOKEN,
    )
    env = {k: v for k, v in stack.env.items() if k != "FLUXGATE_CF_API_TOKEN"}
    env["FLUXGATE_SECRETS_DIR"] = str(folder)
    user_part = env["FLUXGATE_DATABASE_URL"].split("//", 1)[1].split("@", 1)[0]
    assert ":" not in user_part  # no password in the URL itself
    worker = stack.start("worker", [*FLUXGATE, "worker", "--concurrency", "4"], env)
    wait_until(lambda: " ready." in worker.log(), timeout=60, what="the worker", watch=[worker])
    stack.start_api()
    with stack.client(stack.create_key("secrets")) as client:
        job = wait_for_job(client, submit(client, unique("secrets")), statuses={"succeeded"})
    assert job["status"] == "succeeded"
    # The same process also reached PostgreSQL with the merged URL: a CLI command run likewise.
    listed = subprocess.run(
        [*FLUXGATE, "keys", "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "secrets" in listed.stdout


def test_admin_commands_find_a_database_url_kept_as_a_secret_file(
    stack: Stack, tmp_path: Path
) -> None:
    """No FLUXGATE_DATABASE_URL, but its file in the secrets folder (a Kubernetes Secret):
    `keys list` uses it, even run in a folder that holds a `fluxgate dev`'s state."""
    folder = secrets_folder(tmp_path / "secrets", fluxgate_database_url=stack.database_url)
    beside_dev = tmp_path / "beside"
    (beside_dev / ".fluxgate").mkdir(parents=True)
    env = {k: v for k, v in stack.env.items() if not k.startswith("FLUXGATE_")}
    env["FLUXGATE_SECRETS_DIR"] = str(folder)
    stack.create_key("kept as a file")
    listed = subprocess.run(
        [*FLUXGATE, "keys", "list", "--json"],
        env=env,
        cwd=beside_dev,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "kept as a file" in listed.stdout


def test_a_password_in_both_places_or_a_missing_folder_stops_start_up_with_one_line(
    stack: Stack, tmp_path: Path
) -> None:
    folder = secrets_folder(tmp_path / "secrets", fluxgate_database_password=PASSWORD)
    with_password = stack.database_url.replace("postgres@", "postgres:other@")
    cases = [
        (
            {"FLUXGATE_SECRETS_DIR": str(folder), "FLUXGATE_DATABASE_URL": with_password},
            "give it in one place",
        ),
        ({"FLUXGATE_SECRETS_DIR": str(tmp_path / "nowhere")}, "FLUXGATE_SECRETS_DIR"),
    ]
    for settings, message in cases:
        done = subprocess.run(
            [*FLUXGATE, "keys", "list"],
            env={**stack.env, **settings},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_simulator_expects_the_token_in_the_secret_file(tmp_path: Path, log_dir: Path) -> None:
    """In compose the simulator shares the workers' secret: it must expect the file's token."""
    folder = secrets_folder(tmp_path / "secrets", fluxgate_cf_api_token="from-the-file")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXGATE_")}
    env["FLUXGATE_SECRETS_DIR"] = str(folder)
    simulator = subprocess.Popen(
        [*FLUXGATE, "simulate-upstream", "--port", str(port)],
        env=env,
        stdout=(log_dir / "simulator-secrets.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/__sim/stats"), timeout=60, what="the simulator")
        run = f"{url}/client/v4/accounts/a/ai/run/@cf/black-forest-labs/flux-2-klein-4b"
        body = {"prompt": "x", "width": 256, "height": 256}
        # Past the token, the simulator judges the body (this one is refused: not multipart).
        for token, refused in (("simulator-token", True), ("from-the-file", False)):
            answer = httpx.post(
                run,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert (answer.status_code == 401) is refused, answer.text
    finally:
        simulator.terminate()
        simulator.wait(20)


def heartbeat_check(role: str, path: Path) -> list[str]:
    """The compose file's healthcheck for ``role``, pointed at ``path``, to run on this host."""
    _, _, dash_c, check = COMPOSE["services"][role]["healthcheck"]["test"]
    command = COMPOSE["services"][role]["command"]
    in_container = command[command.index("--heartbeat-file") + 1]
    return [sys.executable, dash_c, check.replace(in_container, str(path))]


def test_workers_and_beat_keep_their_heartbeat_files_fresh(stack: Stack, tmp_path: Path) -> None:
    worker_file, beat_file = tmp_path / "worker-heartbeat", tmp_path / "beat-heartbeat"
    worker = stack.start_worker(args=["--heartbeat-file", str(worker_file)])
    beat = stack.start("beat", [*FLUXGATE, "beat", "--heartbeat-file", str(beat_file)])
    files = {"worker": worker_file, "beat": beat_file}
    wait_until(
        lambda: worker_file.exists() and beat_file.exists(),
        timeout=60,
        what="the heartbeat files",
        watch=[worker, beat],
    )
    # Set back in time: the processes bring them to now again within a beat (10 s).
    for path in files.values():
        os.utime(path, (time.time() - 300, time.time() - 300))
    for role, path in files.items():
        assert subprocess.run(heartbeat_check(role, path), capture_output=True).returncode == 1
    wait_until(
        lambda: all(time.time() - path.stat().st_mtime < 15 for path in files.values()),
        timeout=30,
        interval=0.5,
        what="the heartbeats",
        watch=[worker, beat],
    )
    for role, path in files.items():
        assert subprocess.run(heartbeat_check(role, path), capture_output=True).returncode == 0
    # Missing (not started yet, or a wrong path): unhealthy.
    missing = heartbeat_check("webhooks", tmp_path / "missing")
    assert subprocess.run(missing, capture_output=True).returncode == 1

"""``fluxgate dev``: the whole gateway on one machine with no server installed.

SQLite file + kombu's filesystem broker + API + worker + beat (+ the upstream simulator unless
Cloudflare credentials are set), all under one data directory, as child processes of this one.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from app.core.migrate import upgrade_to_head
from app.core.settings import child_environment, load_settings, use_settings

ADMIN_KEY_FILE = "admin-key"
STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_settings(data_dir: Path, *, simulator_port: int | None) -> dict[str, str | None]:
    """The settings every child gets: state under ``data_dir``, no Redis, and the simulator's
    address unless Cloudflare is used; the operator's own ``FLUXGATE_*`` variables still apply
    where the embedded default does not decide."""
    settings: dict[str, str | None] = {
        "database_url": f"sqlite:///{data_dir / 'fluxgate.db'}",
        "broker_url": f"filesystem://{data_dir / 'broker'}",
        "redis_url": None,
    }
    if simulator_port is not None:
        settings["cf_account_id"] = "local-simulator"
        settings["cf_api_token"] = secrets.token_urlsafe(24)
        settings["cf_base_url"] = f"http://127.0.0.1:{simulator_port}/client/v4"
    return settings


def simulator_arguments(port: int, token: str, latency: float) -> list[str]:
    # ``--token=...`` as one argument: a random token may start with "-", which argparse
    # would take for an option.
    return ["simulate-upstream", "--port", str(port), f"--token={token}", "--latency", str(latency)]


def _fluxgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def _admin_key(data_dir: Path) -> str:
    """The admin key kept in ``data_dir/admin-key`` (mode 0600): created on first start, and
    again only if the database no longer knows it."""
    from app.core.db import session_scope
    from app.keys.service import authenticate, create_key

    path = data_dir / ADMIN_KEY_FILE
    with session_scope() as session:
        if path.exists():
            key = path.read_text().strip()
            if authenticate(session, presented=key) is not None:
                return key
            path.unlink()
        key = create_key(session, name="dev admin", is_admin=True).key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _exited(child: Child, log_dir: Path) -> str:
    """What to tell the operator when a child stopped: which, how, and its last log lines."""
    log = log_dir / f"{child.name}.log"
    return (
        f"fluxgate dev: {child.name} exited with code {child.process.returncode}; "
        f"see {log}\n{_log_tail(log)}"
    )


def _wait_for(url: str, children: list[Child], timeout: float, log_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise RuntimeError(_exited(child, log_dir))
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _stop(children: list[Child]) -> None:
    """SIGTERM everyone (workers finish their in-flight jobs), then SIGKILL stragglers."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in reversed(children):
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run_dev(
    *, port: int, data_dir: Path, host: str = "127.0.0.1", simulator_latency: float = 1.0
) -> int:
    data_dir = data_dir.resolve()
    for folder in (data_dir, data_dir / "tmp", data_dir / "logs"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    given = embedded_settings(data_dir, simulator_port=None)
    use_cloudflare = bool(load_settings(**given).cf_account_id)
    simulator_port = None if use_cloudflare else _free_port()
    given = embedded_settings(data_dir, simulator_port=simulator_port)
    # The broker moves each message into the temp dir before reading it: on the same file
    # system as the broker folder that move is an atomic rename.
    env = child_environment(given, other={"TMPDIR": str(data_dir / "tmp")})
    # This process uses the same settings as its children (migrations, the admin key).
    settings = use_settings(load_settings(**given))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the banner says what matters
    upgrade_to_head(settings.database_url)
    key = _admin_key(data_dir)

    children: list[Child] = []
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def start(name: str, argv: list[str]) -> None:
        log = (data_dir / "logs" / f"{name}.log").open("ab")
        # A session of its own: Ctrl-C reaches only this process, which then stops the
        # children in order, once.
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        children.append(Child(name, process))

    try:
        if simulator_port is not None:
            start(
                "simulator",
                _fluxgate(
                    *simulator_arguments(
                        simulator_port, settings.require_upstream()[1], simulator_latency
                    )
                ),
            )
        start("worker", _fluxgate("worker", "--queues", "jobs,maintenance"))
        # Deliveries apart, so a receiver that is slow or down never holds up image jobs.
        start("webhooks", _fluxgate("worker", "--queues", "webhooks", "--concurrency", "8"))
        start("beat", _fluxgate("beat"))
        start("api", _fluxgate("api", "--host", host, "--port", str(port)))
        url = f"http://{host}:{port}"
        _wait_for(f"{url}/readyz", children, timeout=60, log_dir=data_dir / "logs")
        upstream = "Cloudflare Workers AI" if use_cloudflare else "the local upstream simulator"
        auth = f"-H 'Authorization: Bearer {key}'"
        print(
            f"Fluxgate is running at {url} (state in {data_dir}, logs in {data_dir / 'logs'})\n"
            f"Images come from {upstream}.\n"
            f"Admin key: {key}\n"
            f"Dashboard: {url}/admin (sign in with the admin key)\n\n"
            f"Try it:\n"
            f"  curl -s -X POST {url}/v1/jobs {auth} \\\n"
            f"       -H 'Content-Type: application/json' -d '{{\"prompt\": \"a lighthouse\"}}'\n"
            f"  curl -s {url}/v1/jobs/JOB_ID {auth}\n"
            f"  curl -s {url}/v1/jobs/JOB_ID/image {auth} -o image.png\n\n"
            f"Press Ctrl-C to stop.",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.process.poll() is not None:
                    print(_exited(child, data_dir / "logs"), file=sys.stderr)
                    return 1
            time.sleep(0.2)
        print("stopping...", flush=True)
        return 0
    finally:
        _stop(children)

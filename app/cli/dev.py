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

from app.cli.datadir import DEFAULT_DATA_DIR, database_url
from app.core.migrate import upgrade_to_head
from app.core.settings import ConfigError, child_environment, load_settings, use_settings
from app.http.serve import listen

ADMIN_KEY_FILE = "admin-key"
WEBHOOK_SECRET_FILE = "webhook-secret"  # noqa: S105  # a file name, not a secret
# Receivers on this machine are the first thing anyone tries: in dev they may be reached,
# unless the operator set FLUXGATE_WEBHOOK_ALLOWED_NETWORKS themselves.
DEV_WEBHOOK_NETWORKS = "127.0.0.0/8,::1/128"
STOP_TIMEOUT_SECONDS = 30.0


SIMULATOR = "simulator"


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
        "database_url": database_url(data_dir),
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


def _write_private(path: Path, text: str) -> None:
    """``text`` in a file only its owner may read (mode 0600 from the start, not chmod-ed)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _admin_key(data_dir: Path) -> tuple[str, str]:
    """The admin key kept in ``data_dir/admin-key`` and its webhook secret, kept beside it in
    ``webhook-secret`` (both mode 0600): the key is created on first start, and again only if
    the database no longer knows it; the secret file is rewritten at every start, since a
    rotation changes the secret."""
    from app.core.db import session_scope
    from app.keys.service import authenticate, create_key

    path = data_dir / ADMIN_KEY_FILE
    with session_scope() as session:
        known = None
        if path.exists():
            key = path.read_text().strip()
            known = authenticate(session, presented=key)
        if known is None:
            created = create_key(session, name="dev admin", is_admin=True)
            key, known = created.key, created.api_key
            _write_private(path, key)
        secret = known.webhook_secret
    _write_private(data_dir / WEBHOOK_SECRET_FILE, secret)
    return key, secret


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
    """Until ``url`` answers 200 with every child alive. The API child serves the socket this
    process bound and handed over, so no other process can be the one answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise RuntimeError(_exited(child, log_dir))
        try:
            answered = httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            answered = False
        # Checked again after the answer: it counts only while its process is still ours.
        if answered and all(child.process.poll() is None for child in children):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _stop_together(children: list[Child]) -> None:
    """SIGTERM each (workers finish their in-flight jobs), then SIGKILL stragglers."""
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


def _stop(children: list[Child]) -> None:
    """Every child but the simulator first, then the simulator: the workers finish the calls
    they have in flight against a live upstream, where stopping it first would fail them and
    spend their jobs' retry attempts."""
    _stop_together([child for child in children if child.name != SIMULATOR])
    _stop_together([child for child in children if child.name == SIMULATOR])


def _bind(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else happens: a taken port stops
    ``fluxgate dev`` at once, before it migrates or makes a key, and whatever answers on it
    later is the API child it is handed to."""
    try:
        sock = listen(host, port)
    except ConfigError as error:
        raise ConfigError(f"{error} (another gateway running? pick a port with --port)") from None
    sock.listen()
    return sock


def run_dev(
    *, port: int, data_dir: Path, host: str = "127.0.0.1", simulator_latency: float = 1.0
) -> int:
    api_socket = _bind(host, port)
    try:
        return _run(api_socket, port=port, data_dir=data_dir, host=host, latency=simulator_latency)
    finally:
        api_socket.close()


def _run(api_socket: socket.socket, *, port: int, data_dir: Path, host: str, latency: float) -> int:
    data_dir = data_dir.resolve()
    for folder in (data_dir, data_dir / "tmp", data_dir / "logs"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    given = embedded_settings(data_dir, simulator_port=None)
    operators = load_settings(**given)
    use_cloudflare = bool(operators.cf_account_id)
    simulator_port = None if use_cloudflare else _free_port()
    given = embedded_settings(data_dir, simulator_port=simulator_port)
    if "webhook_allowed_networks" not in operators.model_fields_set:
        given["webhook_allowed_networks"] = DEV_WEBHOOK_NETWORKS
    # The broker moves each message into the temp dir before reading it: on the same file
    # system as the broker folder that move is an atomic rename.
    env = child_environment(given, other={"TMPDIR": str(data_dir / "tmp")})
    # This process uses the same settings as its children (migrations, the admin key).
    settings = use_settings(load_settings(**given))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the banner says what matters
    upgrade_to_head(settings.database_url)
    key, webhook_secret = _admin_key(data_dir)

    children: list[Child] = []
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def start(name: str, argv: list[str], *, socket_fd: int | None = None) -> None:
        log = (data_dir / "logs" / f"{name}.log").open("ab")
        # A session of its own: Ctrl-C reaches only this process, which then stops the
        # children in order, once.
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=() if socket_fd is None else (socket_fd,),
        )
        children.append(Child(name, process))

    try:
        if simulator_port is not None:
            start(
                SIMULATOR,
                _fluxgate(
                    *simulator_arguments(simulator_port, settings.require_upstream()[1], latency)
                ),
            )
        start("worker", _fluxgate("worker", "--queues", "jobs,maintenance"))
        # Deliveries apart, so a receiver that is slow or down never holds up image jobs.
        start("webhooks", _fluxgate("worker", "--queues", "webhooks", "--concurrency", "8"))
        start("beat", _fluxgate("beat"))
        fd = api_socket.fileno()
        # One API process: plenty on a laptop, and the quickest to start.
        start("api", _fluxgate("api", "--fd", str(fd), "--workers", "1"), socket_fd=fd)
        url = f"http://{host}:{port}"
        _wait_for(f"{url}/readyz", children, timeout=60, log_dir=data_dir / "logs")
        upstream = "Cloudflare Workers AI" if use_cloudflare else "the local upstream simulator"
        networks = ", ".join(str(network) for network in settings.webhook_networks) or "none"
        auth = f"-H 'Authorization: Bearer {key}'"
        default_dir = data_dir == Path(DEFAULT_DATA_DIR).resolve()
        where = "(in this folder)" if default_dir else f"(with --data-dir {data_dir})"
        print(
            f"Fluxgate is running at {url} (state in {data_dir}, logs in {data_dir / 'logs'})\n"
            f"Images come from {upstream}.\n"
            f"Admin key: {key}\n"
            f"Webhook secret: {webhook_secret} (signs the admin key's deliveries; also in "
            f"{data_dir / WEBHOOK_SECRET_FILE})\n"
            f"Webhooks may reach, besides public https receivers: {networks} "
            f"(FLUXGATE_WEBHOOK_ALLOWED_NETWORKS)\n"
            f"Dashboard: {url}/admin (sign in with the admin key)\n\n"
            f"Try it:\n"
            f"  curl -s -X POST {url}/v1/jobs {auth} \\\n"
            f"       -H 'Content-Type: application/json' -d '{{\"prompt\": \"a lighthouse\"}}'\n"
            f"  curl -s {url}/v1/jobs/JOB_ID {auth}\n"
            f"  curl -s {url}/v1/jobs/JOB_ID/image {auth} -o image.png\n"
            f"Admin commands {where}: fluxgate keys list, fluxgate jobs list, fluxgate usage\n\n"
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

"""Real processes for the tests: a fresh PostgreSQL database, a Redis db, the upstream
simulator, the API, workers and beat, each started through the ``fluxgate`` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import sqlalchemy as sa

from app.core.db import make_engine
from app.core.settings import normalize_database_url

PG_ADMIN_URL = os.environ.get(
    "FLUXGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST = os.environ.get("FLUXGATE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FLUXGATE_TEST_REDIS_PORT", "6379"))
SIM_TOKEN = "sim-token-for-tests"
FLUXGATE = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parent.parent


def unique(prompt: str) -> str:
    """A prompt no other test uses, so the simulator's per-prompt records are this test's."""
    return f"{prompt} [{uuid.uuid4().hex[:8]}]"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new empty database; dropped afterwards."""
    name = f"fluxgate_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_used_redis_dbs: set[int] = set()


def redis_db() -> int:
    """A Redis database number of our own for this run (flushed before use)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for number in range(15, 0, -1):
        if number in _used_redis_dbs:
            continue
        marker = f"fluxgate-test-owner:{number}"
        # Claim the db number across concurrently running test sessions on one machine.
        if client.set(marker, str(os.getpid()), nx=True, ex=3600):
            _used_redis_dbs.add(number)
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
            return number
    raise RuntimeError("no free Redis database number")


def release_redis_db(number: int) -> None:
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT).delete(f"fluxgate-test-owner:{number}")
    _used_redis_dbs.discard(number)


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)
        self._log.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Simulator:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def script(self, prompt: str | None, sequence: list[str]) -> None:
        httpx.post(
            f"{self.url}/__sim/script", json={"prompt": prompt, "sequence": sequence}
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/__sim/stats").json()  # type: ignore[no-any-return]

    def requests_for(self, prompt: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/__sim/requests", params={"prompt": prompt}).json()  # type: ignore[no-any-return]

    def count(self, prompt: str) -> int:
        return int(self.stats()["by_prompt"].get(prompt, 0))


class Stack:
    """One gateway: its database, Redis db, simulator, and the processes started on demand."""

    def __init__(
        self,
        log_dir: Path,
        *,
        backend: str = "postgres",
        latency: float = 0.05,
        faults: str = "",
        **settings: str,
    ) -> None:
        """``faults``: the simulator's fault rates, e.g. ``"3040=0.05,hang=0.01"``;
        ``settings``: FLUXGATE_* settings by lower-case name, e.g. ``job_lease_seconds="40"``."""
        self.log_dir = log_dir
        self.backend = backend
        self.processes: list[Process] = []
        self._cleanup: list[Callable[[], None]] = []
        if backend == "postgres":
            database = postgres_database()
            self.database_url = database.__enter__()
            self._cleanup.append(lambda: database.__exit__(None, None, None))
            number = redis_db()
            self._cleanup.append(lambda: release_redis_db(number))
            self.redis_db: int | None = number
            broker = {"FLUXGATE_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"}
        elif backend == "embedded":
            # The embedded default: a SQLite file and kombu's filesystem broker, no servers.
            self.data_dir = Path(tempfile.mkdtemp(prefix="fluxgate-embedded-"))
            self._cleanup.append(lambda: shutil.rmtree(self.data_dir, ignore_errors=True))
            (self.data_dir / "tmp").mkdir()
            self.database_url = f"sqlite:///{self.data_dir / 'fluxgate.db'}"
            self.redis_db = None
            broker = {
                "FLUXGATE_BROKER_URL": f"filesystem://{self.data_dir / 'broker'}",
                "TMPDIR": str(self.data_dir / "tmp"),
            }
        else:
            raise ValueError(backend)
        self._engine = make_engine(normalize_database_url(self.database_url))
        self._cleanup.append(self._engine.dispose)
        sim_port = free_port()
        self.simulator = Simulator(sim_port)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLUXGATE_")},
            "FLUXGATE_DATABASE_URL": self.database_url,
            **broker,
            "FLUXGATE_CF_ACCOUNT_ID": "test-account",
            "FLUXGATE_CF_API_TOKEN": SIM_TOKEN,
            "FLUXGATE_CF_BASE_URL": f"{self.simulator.url}/client/v4",
            "FLUXGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
            "FLUXGATE_UPSTREAM_TIMEOUT_SECONDS": "3",
            "FLUXGATE_JOB_LEASE_SECONDS": "6",
            "FLUXGATE_RETRY_BASE_SECONDS": "0.2",
            "FLUXGATE_RETRY_MAX_SECONDS": "2",
            "FLUXGATE_UPSTREAM_MAX_ATTEMPTS": "4",
            "FLUXGATE_SWEEP_INTERVAL_SECONDS": "1",
            "FLUXGATE_REQUEUE_AFTER_SECONDS": "3",
            "FLUXGATE_WORKER_CONCURRENCY": "16",
            # The simulator has no account limit; the limiter's own tests set a low one.
            "FLUXGATE_UPSTREAM_RPM": "1000000",
            # Small upload limits keep the hostile-upload tests cheap.
            "FLUXGATE_MAX_REQUEST_BYTES": str(4 * 1024 * 1024),
            "FLUXGATE_INPUT_IMAGE_MAX_BYTES": str(1024 * 1024),
            "FLUXGATE_INPUT_IMAGE_MAX_PIXELS": str(16_000_000),
            # Slow clients are cut off quickly, so the tests of it are quick.
            "FLUXGATE_REQUEST_HEADER_TIMEOUT_SECONDS": "3",
            "FLUXGATE_REQUEST_BODY_TIMEOUT_SECONDS": "3",
            **{f"FLUXGATE_{k.upper()}": v for k, v in settings.items()},
        }
        self.cli("migrate")
        sim = self.start(
            "simulator",
            [
                *FLUXGATE,
                "simulate-upstream",
                "--port",
                str(sim_port),
                "--token",
                SIM_TOKEN,
                "--latency",
                str(latency),
                "--hang-seconds",
                "4",
                f"--faults={faults}",
            ],
        )
        wait_until(
            lambda: answers(f"{self.simulator.url}/__sim/stats"), timeout=20, what="simulator"
        )
        assert sim.popen.poll() is None
        self.api_url = ""

    def process(self, name: str) -> Process:
        """The first process started under ``name`` (e.g. "api")."""
        return next(process for process in self.processes if process.name == name)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, env or self.env, self.log_dir)
        self.processes.append(process)
        return process

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FLUXGATE, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start_api(self) -> Process:
        """An API process; the first one started is the one ``api_url`` and clients use."""
        api, url = self.start_extra_api()
        self.api_url = self.api_url or url
        return api

    def start_extra_api(self) -> tuple[Process, str]:
        port = free_port()
        api = self.start("api", [*FLUXGATE, "api", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/healthz"), timeout=20, what="api")
        return api, url

    def start_worker(
        self, concurrency: int | None = 16, *, queues: str | None = None, **settings: str
    ) -> Process:
        """``concurrency=None`` runs the worker exactly as an operator would by default;
        ``queues`` e.g. ``"webhooks"``; ``settings`` override the stack's for this worker."""
        env = {**self.env, **{f"FLUXGATE_{k.upper()}": v for k, v in settings.items()}}
        argv = [*FLUXGATE, "worker"]
        if concurrency is None:
            env.pop("FLUXGATE_WORKER_CONCURRENCY", None)
        else:
            argv += ["--concurrency", str(concurrency)]
        if queues is not None:
            argv += ["--queues", queues]
        worker = self.start("worker", argv, env)
        wait_until(lambda: " ready." in worker.log(), timeout=30, what="worker ready")
        return worker

    def start_beat(self) -> Process:
        return self.start("beat", [*FLUXGATE, "beat"])

    def create_key(self, name: str = "test", *extra: str) -> str:
        """A new key through the CLI (``extra``: e.g. ``"--admin"``, ``"--budget-usd", "1"``)."""
        return self.create_key_with_secret(name, *extra)[0]

    def create_key_with_secret(self, name: str = "test", *extra: str) -> tuple[str, str, str]:
        """A new key through the CLI: (key, id, webhook secret)."""
        created = json.loads(self.cli("keys", "create", "--name", name, "--json", *extra).stdout)
        return str(created["key"]), str(created["id"]), str(created["webhook_secret"])

    def metrics(self) -> dict[str, float]:
        """The API's /metrics samples by name."""
        text = httpx.get(f"{self.api_url}/metrics", timeout=10).text
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self._engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(query), params)]

    def execute(self, statement: str, **params: Any) -> None:
        with self._engine.begin() as connection:
            connection.execute(sa.text(statement), params)

    def flush_broker(self) -> None:
        """Lose every message the broker holds."""
        if self.redis_db is not None:
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb()
        else:
            for message in (self.data_dir / "broker" / "messages").iterdir():
                message.unlink()

    def send_duplicates(self, job_id: str, count: int) -> None:
        """Publish ``count`` more forward messages for ``job_id``, as redeliveries would."""
        script = (
            "from app import backends; from app.core import queue; "
            "from app.core.settings import get_settings; backends.connect(get_settings()); "
            f"[queue.send_forward({job_id!r}) for _ in range({count})]"
        )
        subprocess.run(
            [sys.executable, "-c", script], env=self.env, cwd=ROOT, check=True, timeout=60
        )

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for cleanup in reversed(self._cleanup):
            cleanup()


def wait_for_job(
    client: httpx.Client, job_id: str, *, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        nonlocal found
        found = client.get(f"/v1/jobs/{job_id}").json()
        return found.get("status") in statuses

    wait_until(check, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")
    return found


FINAL = {"succeeded", "failed", "canceled"}


@contextmanager
def running_gateway(
    log_dir: Path,
    *,
    backend: str,
    latency: float,
    worker: bool,
    beat: bool = True,
    **settings: str,
) -> Iterator[Stack]:
    """A gateway with its API and beat started (and a worker, unless the test runs its own;
    no beat where the test must see what happens without the sweeper)."""
    gateway = Stack(log_dir, backend=backend, latency=latency, **settings)
    try:
        gateway.start_api()
        if worker:
            gateway.start_worker()
        if beat:
            gateway.start_beat()
        yield gateway
    finally:
        gateway.close()

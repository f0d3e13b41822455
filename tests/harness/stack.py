"""A gateway on real processes: its database and broker, the upstream simulator, and the API,
workers and beat started on demand, each through the ``fluxgate`` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from celery import Celery

from app.core.db import make_engine
from app.core.settings import normalize_database_url
from tests.harness.claims import RedisDb, postgres_database, redis_db
from tests.harness.processes import (
    FLUXGATE,
    ROOT,
    Process,
    StackError,
    answers,
    free_port,
    stop_all,
    wait_until,
)

SIM_TOKEN = "sim-token-for-tests"
# The tests' settings (FLUXGATE_* by lower-case name): short leases, timeouts and retries, so
# that what a test waits for happens within seconds.
TEST_SETTINGS: Mapping[str, str] = {
    "upstream_connect_timeout_seconds": "1",
    "upstream_timeout_seconds": "3",
    "job_lease_seconds": "6",
    "retry_base_seconds": "0.2",
    "retry_max_seconds": "2",
    "upstream_max_attempts": "4",
    "sweep_interval_seconds": "1",
    "requeue_after_seconds": "3",
    "worker_concurrency": "16",
    # One API process per stack keeps the many stacks of a test run light; the default (one
    # per core) and several processes have tests of their own.
    "api_workers": "1",
    # The simulator has no account limit; the limiter's own tests set a low one.
    "upstream_rpm": "1000000",
    # Small upload limits keep the hostile-upload tests cheap.
    "max_request_bytes": str(4 * 1024 * 1024),
    "input_image_max_bytes": str(1024 * 1024),
    "input_image_max_pixels": str(16_000_000),
    # Slow clients are cut off quickly, so the tests of it are quick.
    "request_header_timeout_seconds": "3",
    "request_body_timeout_seconds": "3",
}


class CommandFailed(StackError, subprocess.CalledProcessError):
    """A ``fluxgate`` command exited non-zero."""

    def __str__(self) -> str:
        command = " ".join(["fluxgate", *self.cmd[len(FLUXGATE) :]])
        return f"{command} exited {self.returncode}: {self.stderr}"


class Simulator:
    """A client of the upstream simulator's own endpoints (``/__sim/...``)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def script(self, prompt: str | None, sequence: list[str]) -> None:
        httpx.post(
            f"{self.url}/__sim/script", json={"prompt": prompt, "sequence": sequence}
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/__sim/stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Forget the requests and counters so far (max_in_flight included)."""
        httpx.post(f"{self.url}/__sim/reset").raise_for_status()

    def requests_for(self, prompt: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/__sim/requests", params={"prompt": prompt}).json()  # type: ignore[no-any-return]

    def count(self, prompt: str) -> int:
        return int(self.stats()["by_prompt"].get(prompt, 0))


def _env_names(settings: Mapping[str, str]) -> dict[str, str]:
    return {f"FLUXGATE_{name.upper()}": value for name, value in settings.items()}


def _text(statement: str, params: Mapping[str, Any]) -> sa.TextClause:
    lists = [name for name, value in params.items() if isinstance(value, list | tuple)]
    return sa.text(statement).bindparams(*(sa.bindparam(name, expanding=True) for name in lists))


class Stack:
    """One gateway: its database, broker, simulator, and the processes started on demand.

    Migrated, with the simulator answering, once constructed; ``close()`` stops every process
    and gives back what the stack claimed.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        backend: str = "postgres",
        latency: float = 0.05,
        faults: str = "",
        base_settings: Mapping[str, str] = TEST_SETTINGS,
        database_url: str | None = None,
        redis: RedisDb | None = None,
        **settings: str,
    ) -> None:
        """``backend``: "postgres" (PostgreSQL + Redis) or "embedded" (a SQLite file and the
        filesystem broker, no servers); ``latency``: the simulator's seconds per call;
        ``faults``: its fault rates, e.g. ``"3040=0.05,hang=0.01"``.

        ``base_settings`` and then ``settings``: FLUXGATE_* settings by lower-case name, e.g.
        ``job_lease_seconds="40"``, for every process. A PostgreSQL stack claims a database and
        a Redis db of its own unless given them (``database_url``, ``redis``), which it then
        leaves to whoever claimed them.
        """
        self.log_dir = log_dir
        self.backend = backend
        self.processes: list[Process] = []
        self._resources = ExitStack()
        self.redis: RedisDb | None = None
        self.api_url = ""
        try:
            broker = self._claim(database_url, redis)
            self._engine = make_engine(normalize_database_url(self.database_url))
            self._resources.callback(self._engine.dispose)
            sim_port = free_port()
            self.simulator = Simulator(sim_port)
            self.env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("FLUXGATE_")},
                "FLUXGATE_DATABASE_URL": self.database_url,
                **broker,
                "FLUXGATE_CF_ACCOUNT_ID": "test-account",
                "FLUXGATE_CF_API_TOKEN": SIM_TOKEN,
                "FLUXGATE_CF_BASE_URL": f"{self.simulator.url}/client/v4",
                **_env_names(base_settings),
                **_env_names(settings),
            }
            self._cli_log = log_dir / f"cli-{uuid.uuid4().hex[:6]}.log"
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
                lambda: answers(f"{self.simulator.url}/__sim/stats"),
                timeout=60,
                what="the simulator",
                watch=[sim],
            )
        except BaseException:
            self.close()
            raise

    def _claim(self, database_url: str | None, redis: RedisDb | None) -> dict[str, str]:
        """Set up the database and the broker; their settings for the processes."""
        if self.backend == "postgres":
            self.database_url = database_url or self._resources.enter_context(postgres_database())
            self.redis = redis or self._resources.enter_context(redis_db())
            return {"FLUXGATE_REDIS_URL": self.redis.url}
        if self.backend != "embedded" or database_url or redis:
            raise ValueError(f"backend {self.backend!r} with {database_url=}, {redis=}")
        self.data_dir = Path(tempfile.mkdtemp(prefix="fluxgate-embedded-"))
        self._resources.callback(shutil.rmtree, self.data_dir, ignore_errors=True)
        (self.data_dir / "tmp").mkdir()
        self.database_url = f"sqlite:///{self.data_dir / 'fluxgate.db'}"
        return {
            "FLUXGATE_BROKER_URL": f"filesystem://{self.data_dir / 'broker'}",
            "TMPDIR": str(self.data_dir / "tmp"),
        }

    def process(self, name: str) -> Process:
        """The first process started under ``name`` (e.g. "api")."""
        return next(process for process in self.processes if process.name == name)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, env or self.env, self.log_dir)
        self.processes.append(process)
        return process

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``fluxgate ARGS`` to the end; its output is also appended to the stack's
        ``cli-*.log``."""
        argv = [*FLUXGATE, *args]
        done = subprocess.run(
            argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        with self._cli_log.open("a") as log:
            log.write(f"$ fluxgate {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            raise CommandFailed(done.returncode, argv, done.stdout, done.stderr)
        return done

    def start_api(self, *, ready_path: str = "/healthz") -> Process:
        """An API process; the first one started is the one ``api_url`` and clients use."""
        api, url = self.start_extra_api(ready_path=ready_path)
        self.api_url = self.api_url or url
        return api

    def start_extra_api(
        self, *, ready_path: str = "/healthz", args: Sequence[str] = (), **settings: str
    ) -> tuple[Process, str]:
        """An API process and its URL, once ``ready_path`` answers (``/readyz``: once the
        database and the broker answer it too); ``args``: more flags (``--workers``);
        ``settings`` override the stack's for it."""
        port = free_port()
        env = {**self.env, **_env_names(settings)}
        api = self.start("api", [*FLUXGATE, "api", "--port", str(port), *args], env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}{ready_path}"), timeout=60, what="the API", watch=[api])
        return api, url

    def start_worker(
        self,
        concurrency: int | None = 16,
        *,
        queues: str | None = None,
        name: str = "worker",
        wait: bool = True,
        args: Sequence[str] = (),
        **settings: str,
    ) -> Process:
        """``concurrency=None`` runs the worker exactly as an operator would by default;
        ``queues`` e.g. ``"webhooks"``; ``args``: more flags (``--metrics-port``);
        ``settings`` override the stack's for this worker.

        ``wait``: until the worker logs that it is ready (at log level INFO or below; at any
        level, ``wait_consuming`` asks the worker itself).
        """
        env = {**self.env, **_env_names(settings)}
        argv = [*FLUXGATE, "worker"]
        if concurrency is None:
            env.pop("FLUXGATE_WORKER_CONCURRENCY", None)
        else:
            argv += ["--concurrency", str(concurrency)]
        if queues is not None:
            argv += ["--queues", queues]
        argv += args
        worker = self.start(name, argv, env)
        if wait:
            wait_until(
                lambda: " ready." in worker.log(),
                timeout=60,
                what=f"{name} to be ready",
                watch=[worker],
            )
        return worker

    def wait_consuming(self, workers: Sequence[Process], *, timeout: float = 60) -> None:
        """Until every one of ``workers`` answers a Celery control ping, so its consumer is
        attached to the queues (Redis broker only)."""
        if self.redis is None:
            raise ValueError("control pings need the Redis broker")
        # The worker names itself fluxgate-<pid>@<host> (app/cli/roles.py).
        expected = {f"fluxgate-{worker.pid}@" for worker in workers}
        control = Celery("fluxgate-harness", broker=self.redis.url)

        def answered() -> bool:
            replies = control.control.ping(timeout=0.5) or []
            names = {name for reply in replies for name in reply}
            return all(any(n.startswith(prefix) for n in names) for prefix in expected)

        try:
            wait_until(
                answered,
                timeout=timeout,
                interval=0.1,
                what="the workers to answer a ping",
                watch=workers,
            )
        finally:
            control.close()

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

    def client(self, key: str, *, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``query``; a list or tuple parameter is expanded (``id IN :ids``)."""
        with self._engine.connect() as connection:
            return [tuple(row) for row in connection.execute(_text(query, params), params)]

    def execute(self, statement: str, **params: Any) -> None:
        with self._engine.begin() as connection:
            connection.execute(_text(statement, params), params)

    def flush_broker(self) -> None:
        """Lose every message the broker holds."""
        if self.redis is not None:
            self.redis.flush()
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

    def exited(self) -> list[str]:
        """The processes that have exited, as "name (exit N)"."""
        return [
            f"{process.name} (exit {process.popen.returncode})"
            for process in self.processes
            if not process.alive()
        ]

    def stop_processes(self) -> None:
        """Stop every process (all at once; SIGKILL for what is left after 20 s)."""
        stop_all(list(reversed(self.processes)))

    def close(self) -> None:
        """Stop every process, then give back the database, the Redis db, the data folder."""
        self.stop_processes()
        self._resources.close()


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
    gateway = Stack(
        log_dir,
        backend=backend,
        latency=latency,
        # Named, so that mypy knows none of ``settings`` stands for them.
        base_settings=TEST_SETTINGS,
        redis=None,
        **settings,
    )
    try:
        gateway.start_api()
        if worker:
            gateway.start_worker()
        if beat:
            gateway.start_beat()
        yield gateway
    finally:
        gateway.close()

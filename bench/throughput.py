"""Throughput benchmark: N jobs through the real Fluxgate stack against the upstream simulator.

Sets up everything it needs (a fresh PostgreSQL database, an empty Redis db, the simulator,
the API, W workers and beat, an API key), submits the jobs from K client threads, waits until
every job is final, then reports jobs/s, submit rate, upstream calls in flight, the gateway's
overhead per job, queue wait, CPU and peak RSS (bench/throughput_report.py). The stack is the
test harness's (tests/harness/); everything is torn down afterwards, always.

    python bench/throughput.py --jobs 500 --latency 1.0
    python bench/throughput.py --jobs 500 --latency 1.0 --workers 2 --json

Exit status: 0 if every job succeeded, 1 otherwise (failures are listed, logs are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

if not __package__:
    # Run as ``python bench/throughput.py``: ``bench`` and ``tests`` are in the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg

from bench.throughput_report import (
    DEFAULT_WORKER_CONCURRENCY,
    JobRow,
    build_results,
    json_safe,
    print_table,
)
from tests.harness.claims import postgres_database, redis_db
from tests.harness.processes import Process, StackError
from tests.harness.stack import Stack

FINAL_STATUSES = ("succeeded", "failed", "canceled")
PAGE_LIMIT = 100
SAMPLE_INTERVAL = 0.1
POLL_INTERVAL = 1.0
FULL_COUNT_EVERY = 5.0
# Every process's settings before --set (FLUXGATE_* by lower-case name).
BENCH_SETTINGS = {
    "log_level": "WARNING",
    # The simulator has no account limit: measure the gateway, not Workers AI's 720/min
    # (override with --set UPSTREAM_RPM=720 to see the limiter at work).
    "upstream_rpm": "1000000",
    # One API process, whose RSS and CPU the report reads (the default is one per core; its
    # processes would be children this report does not add up).
    "api_workers": "1",
}


class BenchError(Exception):
    """A run that failed; the message is printed and the logs are kept (as for the harness's
    StackError, a set-up that failed)."""


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    jobs: int
    latency: float
    concurrency: int | None
    workers: int
    submitters: int
    width: int
    height: int
    json: bool
    timeout: float
    keep_logs: bool
    settings: dict[str, str]
    warmup: int
    pg_url: str
    redis_url: str

    @property
    def slots(self) -> int:
        """Upstream calls the workers may have in flight together."""
        configured = self.settings.get("FLUXGATE_WORKER_CONCURRENCY")
        per_worker = self.concurrency or int(configured or DEFAULT_WORKER_CONCURRENCY)
        return self.workers * per_worker

    @property
    def ideal_seconds(self) -> float:
        """How long the jobs take with every slot busy and no overhead at all."""
        return math.ceil(self.jobs / self.slots) * self.latency


def image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 512x512, got {text!r}") from None
    return width, height


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name = name.upper().removeprefix("FLUXGATE_")
    return f"FLUXGATE_{name}", value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Drive N jobs through the real Fluxgate stack against the simulator.",
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=500, help="jobs to submit (default 500)"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=1.0,
        help="simulator seconds per upstream call (default 1.0)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="worker --concurrency (default: not passed, the worker runs its default of 64)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes (default 1)"
    )
    parser.add_argument(
        "--submitters",
        type=positive_int,
        default=16,
        help="client threads submitting (default 16)",
    )
    parser.add_argument("--size", type=image_size, default=(512, 512), help="WxH (default 512x512)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="jobs run (under another key) before measuring, to warm connection pools",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for all jobs (default: 120 + 5 x the ideal duration)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the process logs after a good run"
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL admin URL used to create and drop the bench database",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_setting,
        default=[],
        metavar="NAME=VALUE",
        help="extra gateway setting for every process, e.g. DB_POOL_SIZE=64 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error("--latency must be >= 0")
    opts = Options(
        jobs=args.jobs,
        latency=args.latency,
        concurrency=args.concurrency,
        workers=args.workers,
        submitters=args.submitters,
        width=args.size[0],
        height=args.size[1],
        json=args.json,
        timeout=args.timeout or 0.0,
        keep_logs=args.keep_logs,
        settings=dict(args.settings),
        warmup=max(0, args.warmup),
        pg_url=args.pg_url,
        redis_url=args.redis_url.rstrip("/"),
    )
    if args.timeout is None:
        opts = replace(opts, timeout=120 + 5 * opts.ideal_seconds)
    return opts


# ---------------------------------------------------------------------------------------------
# The machine


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------------
# The stack


def start_stack(opts: Options, cleanup: contextlib.ExitStack, log_dir: Path) -> tuple[Stack, str]:
    """The gateway with the API, W workers (each consuming) and beat running, and the key to
    submit with; its teardown goes on ``cleanup`` as it is set up."""
    # Undone in reverse: the processes stop first, then Redis is flushed, then the database
    # is dropped.
    database_url = cleanup.enter_context(postgres_database(opts.pg_url, prefix="fluxgate_bench"))
    redis = cleanup.enter_context(
        redis_db(opts.redis_url, owner="bench", ttl_seconds=6 * 3600, only_empty=True)
    )
    settings = {
        name.removeprefix("FLUXGATE_").lower(): value for name, value in opts.settings.items()
    }
    stack = Stack(
        log_dir,
        latency=opts.latency,
        base_settings=BENCH_SETTINGS,
        database_url=database_url,
        redis=redis,
        **settings,
    )
    cleanup.callback(stack.close)
    stack.start_api(ready_path="/readyz")
    # No --concurrency runs the worker's default; a --set WORKER_CONCURRENCY=C goes in as
    # --concurrency C, which the worker takes the same way.
    configured = opts.settings.get("FLUXGATE_WORKER_CONCURRENCY")
    concurrency = opts.concurrency or (int(configured) if configured else None)
    workers = [
        stack.start_worker(concurrency, name=f"worker{index + 1}", wait=False)
        for index in range(opts.workers)
    ]
    stack.start_beat()
    key = stack.create_key("bench")
    stack.wait_consuming(workers)
    return stack, key


# ---------------------------------------------------------------------------------------------
# Measuring while it runs


@dataclass
class Submitted:
    """What the submitting threads did: the jobs accepted, every POST's latency, the errors,
    and the first POST's start and the last one's end (wall clock)."""

    job_ids: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    abort: threading.Event = field(default_factory=threading.Event)
    started: float = math.inf
    finished: float = 0.0


def submit_all(stack: Stack, opts: Options, run_id: str, result: Submitted, key: str) -> None:
    """POST every job from opts.submitters threads, each with its own connection."""
    lock = threading.Lock()
    next_index = iter(range(opts.jobs))

    def submitter() -> None:
        with stack.client(key) as client:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None or result.abort.is_set():
                    return
                body = {
                    "prompt": f"bench {run_id} job {index}: a lighthouse at dusk, oil painting",
                    "width": opts.width,
                    "height": opts.height,
                }
                began = time.time()
                try:
                    response = client.post("/v1/jobs", json=body)
                    error = None if response.status_code == 202 else response.text[:300]
                    error = error and f"HTTP {response.status_code}: {error}"
                except httpx.HTTPError as exc:
                    response, error = None, f"{type(exc).__name__}: {exc}"
                ended = time.time()
                with lock:
                    result.started = min(result.started, began)
                    result.finished = max(result.finished, ended)
                    result.latencies_ms.append((ended - began) * 1000)
                    if error is None and response is not None:
                        result.job_ids.append(str(response.json()["id"]))
                    else:
                        result.errors.append(error or "unknown error")

    threads = [
        threading.Thread(target=submitter, name=f"submitter-{i}", daemon=True)
        for i in range(opts.submitters)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class InFlightSampler(threading.Thread):
    """GET /__sim/stats every ~100 ms; keeps (wall time, in_flight)."""

    def __init__(self, sim_url: str) -> None:
        super().__init__(name="in-flight-sampler", daemon=True)
        self.url = f"{sim_url}/__sim/stats"
        self.samples: list[tuple[float, int]] = []
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=2) as client:
            next_at = time.monotonic()
            while not self._stop_event.is_set():
                try:
                    stats = client.get(self.url).json()
                    self.samples.append((time.time(), int(stats["in_flight"])))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1
                next_at += SAMPLE_INTERVAL
                self._stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class ConnectionSampler(threading.Thread):
    """Counts PostgreSQL client connections every 100 ms: to our database, and server-wide."""

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(name="pg-connection-sampler", daemon=True)
        self.admin_url = admin_url
        self.database = database
        self.peak_ours = 0
        self.peak_server = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            while not self._stop_event.wait(0.1):
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE datname = %s), count(*)"
                    " FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    (self.database,),
                ).fetchone()
                if row:
                    self.peak_ours = max(self.peak_ours, int(row[0]))
                    self.peak_server = max(self.peak_server, int(row[1]))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def count_final(client: httpx.Client) -> dict[str, int]:
    """Jobs of our key per final status, paging the list endpoint (limit=100)."""
    counts: dict[str, int] = {}
    for status in FINAL_STATUSES:
        total, cursor = 0, None
        while True:
            params: dict[str, str | int] = {"status": status, "limit": PAGE_LIMIT}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/v1/jobs", params=params)
            response.raise_for_status()
            page = response.json()
            total += len(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        counts[status] = total
    return counts


def any_running(client: httpx.Client) -> bool:
    response = client.get("/v1/jobs", params={"status": "running", "limit": 1})
    response.raise_for_status()
    return bool(response.json()["data"])


def wait_all_final(
    stack: Stack,
    submitted: Submitted,
    submitting: threading.Thread,
    deadline: float,
    key: str,
) -> dict[str, int]:
    """Wait until every accepted job is final.

    Polls once a second, and once submitting is over counts the final jobs (paging the list
    endpoint) whenever no job is running, or every 5 s.
    """
    counts: dict[str, int] = {}
    last_full = 0.0
    with stack.client(key) as client:
        while True:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out with {counts or 'no'} final jobs")
            dead = stack.exited()
            if dead:
                raise BenchError(f"processes exited during the run: {', '.join(dead)}")
            if not submitting.is_alive():
                now = time.monotonic()
                if now - last_full >= FULL_COUNT_EVERY or not any_running(client):
                    counts = count_final(client)
                    last_full = now
                    if sum(counts.values()) >= len(submitted.job_ids):
                        return counts
            time.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------------------------------------
# After the run


def read_jobs(database_url: str) -> list[JobRow]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts, created_at, started_at, completed_at, upstream_ms,"
            " error_code, error_message FROM jobs ORDER BY id"
        ).fetchall()
    return [JobRow(*row) for row in rows]


def output_bytes(database_url: str, job_ids: Sequence[str]) -> float:
    """Mean size of the output images stored in PostgreSQL."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT avg(size_bytes) FROM job_images WHERE role = 'output' AND job_id = ANY(%s)",
            (list(job_ids),),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else math.nan


def pg_connections(admin_url: str) -> str:
    """Client connections open on the server (all databases) / max_connections."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE backend_type = 'client backend'),"
            " current_setting('max_connections') FROM pg_stat_activity"
        ).fetchone()
    return f"{row[0]}/{row[1]}" if row else "?"


def describe_unfinished(stack: Stack) -> str:
    """What the jobs that did not finish look like, and the first problems in the logs."""
    lines = []
    with psycopg.connect(stack.database_url) as conn:
        counts = conn.execute(
            "SELECT status, attempts, count(*) FROM jobs"
            " WHERE status NOT IN ('succeeded', 'failed', 'canceled')"
            " GROUP BY status, attempts ORDER BY status, attempts"
        ).fetchall()
        sample = conn.execute(
            "SELECT id, status, attempts, started_at, lease_expires_at, not_before FROM jobs"
            " WHERE status NOT IN ('succeeded', 'failed', 'canceled') ORDER BY id LIMIT 5"
        ).fetchall()
    lines += [
        f"  unfinished: {status} with {attempts} attempt(s): {n}" for status, attempts, n in counts
    ]
    lines += [
        f"  {job_id} {status} attempts={attempts} started_at={started} lease_expires_at={lease}"
        f" not_before={not_before}"
        for job_id, status, attempts, started, lease, not_before in sample
    ]
    for name, info in log_problems(stack.processes).items():
        lines.append(f"  {name} log: {info['count']} warning/error lines, first:")
        lines += [f"    {line[:300]}" for line in info["first"]]
    return "\n".join(lines)


def database_stats(admin_url: str, database_url: str) -> dict[str, float]:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions, active_time, xact_commit, xact_rollback"
            " FROM pg_stat_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None:
        return {}
    return {
        "sessions": float(row[0]),
        "active_ms": float(row[1]),
        "commits": float(row[2]),
        "rollbacks": float(row[3]),
    }


def log_problems(processes: Sequence[Process], limit: int = 5) -> dict[str, dict[str, Any]]:
    """WARNING/ERROR/Traceback lines per process log (the processes log at WARNING)."""
    found: dict[str, dict[str, Any]] = {}
    for process in processes:
        lines = [
            line
            for line in process.log().splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]
        if lines:
            found[process.name] = {"count": len(lines), "first": lines[:limit]}
    return found


# ---------------------------------------------------------------------------------------------
# Main


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let a clean-up finish even if Ctrl-C is pressed again."""
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(opts: Options) -> tuple[dict[str, Any], bool]:
    log_dir = Path(tempfile.mkdtemp(prefix="fluxgate-bench-"))
    ok = False
    cleanup = contextlib.ExitStack()
    try:
        log(opts, f"setting up (logs in {log_dir}) ...")
        stack, key = start_stack(opts, cleanup, log_dir)
        results = measure(opts, stack, key)
        ok = (
            results["jobs"]["failure_count"] == 0
            and results["jobs"]["submit_errors"] == 0
            and results["jobs"]["submitted"] == opts.jobs
        )
        if not ok:
            results["log_dir"] = str(log_dir)
        return results, ok
    except BaseException:
        print(f"bench failed; process logs are in {log_dir}", file=sys.stderr)
        raise
    finally:
        with signals_ignored():
            cleanup.close()
        if ok and not opts.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        elif ok:
            log(opts, f"logs kept in {log_dir}")


def log(opts: Options, message: str) -> None:
    print(message, file=sys.stderr if opts.json else sys.stdout, flush=True)


def warm_up(opts: Options, stack: Stack) -> None:
    """Run opts.warmup jobs under a key of their own and wait for them; not measured."""
    log(opts, f"warming up with {opts.warmup} jobs ...")
    key = stack.create_key("bench-warmup")
    warm = replace(opts, jobs=opts.warmup)
    submitted = Submitted()
    submitting = threading.Thread(
        target=submit_all, args=(stack, warm, "warmup", submitted, key), daemon=True
    )
    submitting.start()
    try:
        wait_all_final(stack, submitted, submitting, time.monotonic() + warm.timeout, key)
    finally:
        submitted.abort.set()
        submitting.join(60)
    if submitted.errors:
        raise BenchError(f"warm-up submits failed: {submitted.errors[:3]}")


def measure(opts: Options, stack: Stack, key: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    if opts.warmup:
        warm_up(opts, stack)
    stack.simulator.reset()
    db_before = database_stats(opts.pg_url, stack.database_url)
    cpu_before = {p.name: p.cpu_seconds() or 0.0 for p in stack.processes}
    machine_before = machine_cpu()
    client_before = own_cpu_seconds()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    connections_before = pg_connections(opts.pg_url)

    log(opts, f"submitting {opts.jobs} jobs from {opts.submitters} threads ...")
    sampler = InFlightSampler(stack.simulator.url)
    sampler.start()
    connections = ConnectionSampler(opts.pg_url, stack.database_url.rsplit("/", 1)[1])
    connections.start()
    submitted = Submitted()
    submitting = threading.Thread(
        target=submit_all,
        args=(stack, opts, run_id, submitted, key),
        name="submit",
        daemon=True,
    )
    try:
        submitting.start()
        deadline = time.monotonic() + opts.timeout
        counts = wait_all_final(stack, submitted, submitting, deadline, key)
    except BenchError as error:
        raise BenchError(f"{error}\n{describe_unfinished(stack)}") from None
    finally:
        submitted.abort.set()  # only matters when leaving early
        sampler.stop()
        connections.stop()
        submitting.join(60)
    machine_after = machine_cpu()
    client_cpu = own_cpu_seconds() - client_before
    sim_stats = stack.simulator.stats()
    processes = {
        p.name: {
            "pid": p.pid,
            "peak_rss_mib": (p.peak_rss_kb() or 0) / 1024,
            "cpu_s": (p.cpu_seconds() or 0.0) - cpu_before[p.name],
        }
        for p in stack.processes
    }
    rows = read_jobs(stack.database_url)
    log(opts, "all jobs final; stopping the stack ...")
    stack.stop_processes()  # the sessions' statistics are complete once their backends exit
    time.sleep(0.5)
    db_after = database_stats(opts.pg_url, stack.database_url)
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    usage = {
        "loadavg_before": loadavg,
        "pg_connections_before": connections_before,
        "output_bytes_mean": output_bytes(stack.database_url, submitted.job_ids),
        "resources": {
            "processes": processes,
            "bench_client_cpu_s": client_cpu,
            "machine_busy_pct": 100 * busy / total if total else math.nan,
            "db": {k: db_after[k] - db_before.get(k, 0.0) for k in db_after}
            | {"connections_peak": connections.peak_ours, "server_peak": connections.peak_server},
        },
    }
    return build_results(
        opts,
        submitted,
        counts,
        rows,
        sampler.samples,
        sampler.errors,
        sim_stats,
        usage,
        log_problems(stack.processes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    try:
        results, ok = run(opts)
    except (BenchError, StackError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        return 130
    if opts.json:
        print(json.dumps(json_safe(results), allow_nan=False, default=str))
    else:
        print()
        print_table(results)
        if not ok:
            print(f"\nNOT all jobs succeeded; process logs are in {results['log_dir']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

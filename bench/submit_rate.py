"""Submission benchmark: how many ``POST /v1/jobs`` the API accepts per second, and what each
costs in CPU, beside a naive endpoint doing the least a submit must do (bench/naive_endpoint.py),
measured in the same run with the same client.

Sets up a gateway through the test harness (a new PostgreSQL database, a claimed Redis db, the
simulator, the API with ``--workers N``, no worker and no beat: every accepted job stays
queued), optionally seeds ``--backlog`` queued jobs in SQL, then sends ``--submits`` POSTs from
``--connections`` keep-alive connections and measures the rate, the latency and the CPU of the
API's process tree and of PostgreSQL's backends. Then the same against the baseline (its own
scratch database, the same backlog in its own table, the same Redis db). Everything is torn down
afterwards, always.

    python bench/submit_rate.py --submits 2000
    python bench/submit_rate.py --submits 2000 --backlog 20000 --api-workers 2 --json

Exit status: 0 if every submit was accepted and every job is queued with its broker message,
1 otherwise (the logs are kept).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/submit_rate.py``: ``bench`` and ``tests`` are in the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis

from app.core.ids import new_id
from app.core.queue import JOBS_QUEUE
from bench import naive_endpoint
from bench.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    BenchError,
    CpuWindow,
    Run,
    bench_run,
    conditions,
    describe,
    dist,
    json_safe,
    main_wrapper,
    percentile,
    start_gateway,
)
from bench.throughput import image_size, positive_int
from tests.harness.claims import postgres_database
from tests.harness.processes import answers, free_port, wait_until
from tests.harness.stack import Stack

PROMPT = "a lighthouse at dusk, oil painting"
# 512x512 klein-4b: one output tile at $0.000287.
ONE_TILE_NANOS = 287_000
COPY_BATCH = 10_000


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    submits: int
    connections: int
    backlog: int
    api_workers: int
    keys: int
    warmup: int
    width: int
    height: int
    simulator_cache: bool
    json: bool
    keep_logs: bool
    pg_url: str
    redis_url: str


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/submit_rate.py",
        description="POST /v1/jobs accepted per second (no worker), beside a naive endpoint.",
    )
    parser.add_argument(
        "--submits", type=positive_int, default=2000, help="measured POSTs (default 2000)"
    )
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=16,
        help="client keep-alive connections, one thread each (default 16)",
    )
    parser.add_argument(
        "--backlog",
        type=_count,
        default=0,
        help="queued jobs seeded in SQL before measuring, under another key (default 0)",
    )
    parser.add_argument(
        "--api-workers",
        type=positive_int,
        default=1,
        help="fluxgate api --workers N (default 1; the baseline stays one process)",
    )
    parser.add_argument(
        "--keys",
        type=positive_int,
        default=1,
        help="Fluxgate keys the connections submit with, round robin (default 1)",
    )
    parser.add_argument(
        "--warmup",
        type=_count,
        default=100,
        help="POSTs sent to each side before measuring, not counted (default 100)",
    )
    parser.add_argument("--size", type=image_size, default=(512, 512), help="WxH (default 512x512)")
    parser.add_argument(
        "--no-sim-cache",
        dest="simulator_cache",
        action="store_false",
        help="run the simulator without --cache (it is idle here: no worker calls it)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the process logs after a good run"
    )
    parser.add_argument(
        "--pg-url",
        default=PG_ADMIN_URL,
        help="PostgreSQL admin URL used to create and drop the bench databases",
    )
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis server")
    args = parser.parse_args(argv)
    return Options(
        submits=args.submits,
        connections=args.connections,
        backlog=args.backlog,
        api_workers=args.api_workers,
        keys=args.keys,
        warmup=args.warmup,
        width=args.size[0],
        height=args.size[1],
        simulator_cache=args.simulator_cache,
        json=args.json,
        keep_logs=args.keep_logs,
        pg_url=args.pg_url,
        redis_url=args.redis_url.rstrip("/"),
    )


# ---------------------------------------------------------------------------------------------
# The load


@dataclass
class Load:
    """What the connections did: (start, end, status) per POST, in perf_counter seconds."""

    calls: list[tuple[float, float, int | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for _, _, status in self.calls if status == 202)


def submit_all(port: int, keys: Sequence[str], count: int, opts: Options, label: str) -> Load:
    """POST ``count`` jobs from opts.connections threads, each with its own keep-alive
    connection (http.client: the lightest client at hand, so the bench's own CPU stays small
    on a shared machine) and key ``keys[thread % len(keys)]``."""
    load = Load()
    lock = threading.Lock()
    numbers = iter(range(count))

    def connection() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def submitter(index: int) -> None:
        headers = {
            "Authorization": f"Bearer {keys[index % len(keys)]}",
            "Content-Type": "application/json",
        }
        conn = connection()
        calls: list[tuple[float, float, int | None]] = []
        try:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    break
                body = json.dumps(
                    {
                        "prompt": f"{PROMPT} ({label} {number})",
                        "width": opts.width,
                        "height": opts.height,
                    }
                ).encode()
                began = time.perf_counter()
                status: int | None
                try:
                    conn.request("POST", "/v1/jobs", body=body, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                    status = response.status
                    if status != 202:
                        with lock:
                            load.errors.append(f"HTTP {status}: {answer[:200]!r}")
                except (OSError, http.client.HTTPException) as error:
                    status = None
                    conn.close()
                    conn = connection()
                    with lock:
                        load.errors.append(f"{type(error).__name__}: {error}")
                calls.append((began, time.perf_counter(), status))
        finally:
            conn.close()
            with lock:
                load.calls.extend(calls)

    threads = [
        threading.Thread(target=submitter, args=(i,), name=f"submitter-{i}", daemon=True)
        for i in range(opts.connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load


# ---------------------------------------------------------------------------------------------
# The two sides


@dataclass
class Side:
    """One side of the comparison: where to submit, with which keys, whose CPU to count, and
    how to check afterwards that every accepted job is queued with its message."""

    name: str
    port: int
    keys: list[str]
    groups: dict[str, int]  # process groups whose CPU is the API's (name -> pgid)
    database_url: str
    queued_sql: str
    redis_url: str
    queue_pattern: str


def start_fluxgate(run: Run, opts: Options) -> tuple[Side, Stack]:
    stack = start_gateway(
        run,
        pg_url=opts.pg_url,
        redis_url=opts.redis_url,
        latency=1.0,
        simulator_cache=opts.simulator_cache,
    )
    args = ["--workers", str(opts.api_workers)] if opts.api_workers > 1 else []
    api, url = stack.start_extra_api(ready_path="/readyz", args=args)
    stack.api_url = url
    keys = [stack.create_key(f"bench-{n + 1}") for n in range(opts.keys)]
    if opts.backlog:
        _, backlog_key_id, _ = stack.create_key_with_secret("bench-backlog")
        run.log(f"seeding {opts.backlog:,} queued jobs ...")
        began = time.monotonic()
        seed_fluxgate_backlog(stack.database_url, backlog_key_id, opts)
        run.log(f"seeded in {time.monotonic() - began:.1f} s")
    assert stack.redis is not None
    side = Side(
        name="Fluxgate",
        port=int(url.rsplit(":", 1)[1]),
        keys=keys,
        groups={"api": api.pid},
        database_url=stack.database_url,
        queued_sql="SELECT count(*) FROM jobs WHERE status = 'queued'",
        redis_url=stack.redis.url,
        queue_pattern=f"{JOBS_QUEUE}*",
    )
    return side, stack


def start_baseline(run: Run, opts: Options, stack: Stack) -> Side:
    """The naive endpoint on a scratch database of its own, sharing the gateway's Redis db
    (another list), started through the harness like any role."""
    database_url = run.cleanup.enter_context(
        postgres_database(opts.pg_url, prefix="fluxgate_bench_naive")
    )
    assert stack.redis is not None
    key = "fgk_baseline_" + uuid.uuid4().hex
    port = free_port()
    server = stack.start(
        "naive-baseline",
        [
            sys.executable,
            "-m",
            "bench.naive_endpoint",
            "--database-url",
            database_url.replace("postgresql://", "postgresql+psycopg://", 1),
            "--redis-url",
            stack.redis.url,
            "--port",
            str(port),
            "--create-key",
            key,
        ],
    )
    url = f"http://127.0.0.1:{port}"
    # Any answer will do (the route is POST only): the server is up.
    wait_until(
        lambda: answers(f"{url}/v1/jobs"),
        timeout=60,
        what="the baseline endpoint",
        watch=[server],
    )
    if opts.backlog:
        seed_baseline_backlog(database_url, opts)
    return Side(
        name="baseline",
        port=port,
        keys=[key],
        groups={"api": server.pid},
        database_url=database_url,
        queued_sql="SELECT count(*) FROM naive_jobs WHERE status = 'queued'",
        redis_url=stack.redis.url,
        queue_pattern=naive_endpoint.QUEUE,
    )


def seed_fluxgate_backlog(database_url: str, key_id: str, opts: Options) -> None:
    """``opts.backlog`` queued klein-4b jobs of ``key_id`` as the gateway stores them (ids made
    by the gateway's own function, so they sort before every job submitted afterwards); no
    broker messages: no worker runs."""
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id FROM prices WHERE model = 'flux-2-klein-4b' AND effective_from <= now()"
            " ORDER BY effective_from DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise BenchError("no klein-4b price in the database")
        price_id = int(row[0])
        columns = (
            "id, api_key_id, status, model, prompt, width, height, steps, input_image_count,"
            " metadata, price_id, estimated_nanos, input_tiles, output_tiles, attempts,"
            " created_at, enqueued_at"
        )
        for start in range(0, opts.backlog, COPY_BATCH):
            rows = io.StringIO()
            for number in range(start, min(start + COPY_BATCH, opts.backlog)):
                rows.write(
                    f"{new_id('job')}\t{key_id}\tqueued\tflux-2-klein-4b\t{PROMPT} (backlog"
                    f" {number})\t512\t512\t4\t0\t{{}}\t{price_id}\t{ONE_TILE_NANOS}\t0\t1\t0"
                    f"\t{now.isoformat()}\t{now.isoformat()}\n"
                )
            with conn.cursor() as cursor, cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
                copy.write(rows.getvalue())
        conn.execute("ANALYZE jobs")


def seed_baseline_backlog(database_url: str, opts: Options) -> None:
    """The same backlog in the baseline's table: the comparison is at equal table sizes."""
    now = datetime.now(UTC).isoformat()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for start in range(0, opts.backlog, COPY_BATCH):
            rows = io.StringIO()
            for number in range(start, min(start + COPY_BATCH, opts.backlog)):
                rows.write(
                    f"job_{uuid.uuid4().hex}\tkey_baseline\tqueued\tflux-2-klein-4b"
                    f"\t{PROMPT} (backlog {number})\t512\t512\t{now}\n"
                )
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY naive_jobs (id, api_key_id, status, model, prompt, width, height,"
                    " created_at) FROM STDIN"
                ) as copy,
            ):
                copy.write(rows.getvalue())
        conn.execute("ANALYZE naive_jobs")


# ---------------------------------------------------------------------------------------------
# Measuring one side


def measure(run: Run, side: Side, opts: Options, run_id: str) -> dict[str, Any]:
    if opts.warmup:
        run.log(f"{side.name}: warming up with {opts.warmup} submits ...")
        warm = submit_all(side.port, side.keys, opts.warmup, opts, f"{run_id} warm-up")
        if warm.errors:
            raise BenchError(f"{side.name}: warm-up submits failed: {warm.errors[:3]}")
    database = side.database_url.rsplit("/", 1)[1]
    cpu = CpuWindow(side.groups, opts.pg_url, database)
    run.log(f"{side.name}: {opts.submits} submits from {opts.connections} connections ...")
    cpu.start()
    load = submit_all(side.port, side.keys, opts.submits, opts, run_id)
    cpu.stop()

    calls = sorted(load.calls)
    accepted = load.accepted
    window = calls[-1][1] - calls[0][0] if calls else math.nan
    latencies = [(end - began) * 1000 for began, end, _ in calls]
    tenth = max(1, len(latencies) // 10)
    with psycopg.connect(side.database_url) as conn:
        row = conn.execute(side.queued_sql).fetchone()
    queued = int(row[0]) if row else 0
    with redis.Redis.from_url(side.redis_url) as client:
        messages = sum(int(client.llen(name)) for name in client.scan_iter(side.queue_pattern))
    expected = opts.backlog + opts.warmup + accepted
    return {
        "accepted": accepted,
        "errors": len(load.errors),
        "first_errors": load.errors[:5],
        "seconds": window,
        "per_second": accepted / window if window else math.nan,
        "latency_ms": dist(latencies),
        "latency_ms_p50_first_tenth": percentile(latencies[:tenth], 50),
        "latency_ms_p50_last_tenth": percentile(latencies[-tenth:], 50),
        "cpu_ms_per_submit": {
            name: 1000 * seconds / accepted if accepted else math.nan
            for name, seconds in cpu.spent.items()
        },
        "machine_busy_pct": cpu.machine_busy_pct,
        "other_processes_cpu_s": dict(cpu.others),
        "queued_after": queued,
        "queued_expected": expected,
        "broker_messages": messages,
        "broker_messages_expected": opts.warmup + accepted,
    }


def check(results: dict[str, Any], opts: Options) -> list[str]:
    """What went wrong: refused submits, jobs not queued, messages missing."""
    problems = []
    for name, side in results["sides"].items():
        if side["accepted"] != opts.submits:
            problems.append(f"{name}: {side['accepted']} of {opts.submits} submits accepted")
        if side["queued_after"] != side["queued_expected"]:
            problems.append(
                f"{name}: {side['queued_after']} jobs queued, {side['queued_expected']} expected"
            )
        if side["broker_messages"] != side["broker_messages_expected"]:
            problems.append(
                f"{name}: {side['broker_messages']} broker messages,"
                f" {side['broker_messages_expected']} expected"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Output


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _ratio(a: Any, b: Any) -> str:
    if not a or not b or not all(math.isfinite(x) for x in (a, b)):
        return "-"
    return f"{a / b:.2f}"


def print_table(results: dict[str, Any]) -> None:
    o = results["options"]
    gw, base = results["sides"]["Fluxgate"], results["sides"]["baseline"]
    print(
        f"Fluxgate submit rate: {o['submits']:,} POST /v1/jobs {o['width']}x{o['height']} from"
        f" {o['connections']} connections, backlog {o['backlog']:,} queued jobs, API"
        f" {o['api_workers']} process(es), {o['keys']} key(s), no worker"
    )
    print(f"  {describe(results['conditions'])}")
    print()
    rows: list[tuple[str, str, str, str]] = [("", "Fluxgate", "baseline", "Fluxgate/baseline")]

    def row(label: str, a: Any, b: Any, digits: int = 1) -> None:
        rows.append((label, _f(a, digits), _f(b, digits), _ratio(a, b)))

    row("submits accepted / s", gw["per_second"], base["per_second"])
    for q in ("p50", "p95", "p99", "max"):
        row(f"POST latency ms {q}", gw["latency_ms"][q], base["latency_ms"][q])
    row(
        "  p50 of the first 10% of POSTs",
        gw["latency_ms_p50_first_tenth"],
        base["latency_ms_p50_first_tenth"],
    )
    row(
        "  p50 of the last 10% of POSTs",
        gw["latency_ms_p50_last_tenth"],
        base["latency_ms_p50_last_tenth"],
    )
    for name, label in (
        ("api", "API CPU ms per submit (process tree)"),
        ("postgres", "PostgreSQL backends CPU ms per submit"),
        ("client", "bench client CPU ms per submit"),
        ("rest", "rest of the machine CPU ms per submit"),
    ):
        row(label, gw["cpu_ms_per_submit"][name], base["cpu_ms_per_submit"][name], 2)
    row("machine CPU busy % (both cores)", gw["machine_busy_pct"], base["machine_busy_pct"])
    rows.append(
        (
            "accepted / errors",
            f"{gw['accepted']:,} / {gw['errors']}",
            f"{base['accepted']:,} / {base['errors']}",
            "",
        )
    )
    rows.append(
        (
            "queued after (DB) / broker messages",
            f"{gw['queued_after']:,} / {gw['broker_messages']:,}",
            f"{base['queued_after']:,} / {base['broker_messages']:,}",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for label, a, b, ratio in rows:
        line = f"  {label:<{widths[0]}}  {a:>{widths[1]}}  {b:>{widths[2]}}  {ratio:>{widths[3]}}"
        print(line.rstrip())
    for name, side in results["sides"].items():
        print(f"  {name} run, the rest's biggest spenders still running at its end (CPU s):")
        for process, seconds in side["other_processes_cpu_s"].items():
            print(f"    {seconds:6.2f}  {process}")
    for name, side in results["sides"].items():
        for error in side["first_errors"]:
            print(f"  {name} error: {error}")
    for problem in results["problems"]:
        print(f"  PROBLEM: {problem}")


# ---------------------------------------------------------------------------------------------
# Main


def run_bench(opts: Options) -> int:
    with bench_run("fluxgate-bench-submit-", keep_logs=opts.keep_logs, json=opts.json) as run:
        found = conditions()  # before anything of ours runs
        fluxgate, stack = start_fluxgate(run, opts)
        baseline = start_baseline(run, opts, stack)
        run_id = uuid.uuid4().hex[:8]
        sides = {}
        for side in (fluxgate, baseline):
            sides[side.name] = measure(run, side, opts, run_id)
            dead = stack.exited()
            if dead:
                raise BenchError(f"processes exited during the run: {', '.join(dead)}")
        results: dict[str, Any] = {
            "options": {
                "submits": opts.submits,
                "connections": opts.connections,
                "backlog": opts.backlog,
                "api_workers": opts.api_workers,
                "keys": opts.keys,
                "warmup": opts.warmup,
                "width": opts.width,
                "height": opts.height,
            },
            "conditions": found,
            "sides": sides,
        }
        results["problems"] = check(results, opts)
        run.ok = not results["problems"]
        if opts.json:
            print(json.dumps(json_safe(results), allow_nan=False))
        else:
            print()
            print_table(results)
        return 0 if run.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    return main_wrapper(lambda: run_bench(opts))


if __name__ == "__main__":
    raise SystemExit(main())

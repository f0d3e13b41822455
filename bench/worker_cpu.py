"""Worker CPU benchmark: the CPU one job costs in the worker's own code, and where it goes.

Sets up a gateway through the test harness (a new PostgreSQL database, a claimed Redis db, the
simulator at ``--latency`` seconds with its cache, the API; no worker, no beat), submits
``--jobs`` jobs, then runs the worker's task (``worker.tasks.forward_job``, the function a
Celery worker calls for each message) in this process, one job at a time, on one thread. Each
job's CPU is that thread's CPU time (``time.thread_time()``), so nothing else on the machine
is counted: neither the simulator nor PostgreSQL nor Redis, nor Celery's consumer (receiving
and acknowledging the message: measured apart at the end).

A second pass over as many jobs runs under ``cProfile`` with the thread's CPU clock as its
timer and prints the phases of a job (the claim, the upstream call, the image check, the
finish, the messages after the commit) and the functions with the most CPU of their own.
Profiling slows Python code down, so the phases are shares, and the first pass's figure is
the cost.

Then the same in a worker process, beside Celery's own cost: a worker started as the CLI starts
it (``fluxgate worker``, its default concurrency) with one more task registered, one that does
nothing. After ``--warmup`` jobs and empty messages, that process's CPU (all its threads,
``/proc``) is measured while ``--jobs`` jobs are submitted and run, and again while as many
messages of the empty task go through the same queue (its idle CPU is printed, not
subtracted). The second is what a message costs Celery (receiving, dispatching to a thread,
acknowledging) before the task does anything.

    python bench/worker_cpu.py --jobs 200
    python bench/worker_cpu.py --jobs 200 --json
    python bench/worker_cpu.py --jobs 200 --no-worker-process   # the in-process passes only

Exit status: 0 if every job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/worker_cpu.py``: ``bench`` and ``tests`` are in the root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    BenchError,
    Run,
    bench_run,
    conditions,
    cpu_seconds,
    describe,
    dist,
    json_safe,
    main_wrapper,
    start_gateway,
    wait_for,
)
from tests.harness.processes import ROOT, Process
from tests.harness.stack import Stack

# The task that does nothing, registered by the worker process this bench starts.
EMPTY_TASK = "bench.empty"
# Where kombu's Redis transport keeps the messages a worker holds unacknowledged.
UNACKED = "unacked"

# Our own code's files, by the start of their paths in a profile.
OURS = (str(ROOT / "app") + os.sep, str(ROOT / "worker") + os.sep)

# What the task module calls, each step of a job timed by wrapping its name there.
STEPS = ("wait_for_turn", "with_transaction", "call_upstream", "inspect_image")

# The phases of one job under the profiler, each the cumulative CPU of one of our functions.
PHASES = {
    "claim (transaction)": "claim_next",
    "upstream call (HTTP, multipart, base64)": "generate",
    "image check": "inspect_image",
    "finish (transaction)": "record_outcome",
    "commit and after-commit messages": "_after_commit",
}


@dataclass(frozen=True)
class Options:
    jobs: int
    latency: float
    warmup: int
    json: bool
    profile_out: Path | None
    worker_process: bool
    keep_logs: bool
    pg_url: str
    redis_url: str


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per pass (default 200)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="simulator seconds per call (default 0)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="jobs run first, not counted")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--profile-out", type=Path, help="also write the profile here (pstats format)"
    )
    parser.add_argument(
        "--no-worker-process",
        dest="worker_process",
        action="store_false",
        help="skip the worker process and the empty task",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.warmup < 0:
        parser.error("--jobs must be at least 1 and --warmup at least 0")
    return Options(
        jobs=args.jobs,
        latency=args.latency,
        warmup=args.warmup,
        json=args.json,
        profile_out=args.profile_out,
        worker_process=args.worker_process,
        keep_logs=args.keep_logs,
        pg_url=args.pg_url,
        redis_url=args.redis_url,
    )


def submit(stack: Stack, key: str, count: int) -> list[str]:
    """``count`` klein jobs through the API, in order; their ids."""
    ids = []
    with stack.client(key) as client:
        for n in range(count):
            answer = client.post(
                "/v1/jobs",
                json={"model": "flux-2-klein-4b", "prompt": f"a lighthouse {n}", "seed": n},
            )
            if answer.status_code != 202:
                raise BenchError(f"submit answered {answer.status_code}: {answer.text[:200]}")
            ids.append(answer.json()["id"])
    return ids


class Phases:
    """CPU ms each of the task's steps spent on this thread, by wrapping the names the task
    module calls them by (the step itself is unchanged)."""

    def __init__(self, module: Any, names: Sequence[str]) -> None:
        self.spent: dict[str, float] = dict.fromkeys(names, 0.0)
        self.transactions = [0.0, 0.0]  # the claim's, the finish's (commit included)
        self._calls = 0
        for name in names:
            setattr(module, name, self._timed(name, getattr(module, name)))

    def _timed(self, name: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return step(*args, **kwargs)
            finally:
                spent = 1000 * (time.thread_time() - began)
                self.spent[name] += spent
                if name == "with_transaction":
                    self.transactions[self._calls % 2] += spent
                    self._calls += 1

        return timed


def run_jobs(forward: Callable[[str], None], ids: Sequence[str]) -> list[float]:
    """Each job through the worker's task on this thread: its CPU ms."""
    spent = []
    for job_id in ids:
        began = time.thread_time()
        forward(job_id)
        spent.append(1000 * (time.thread_time() - began))
    return spent


def phases(profile: cProfile.Profile, jobs: int) -> tuple[dict[str, float], list[list[Any]]]:
    """CPU ms per job of each phase, and the 20 functions with the most CPU of their own."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    by_phase = dict.fromkeys(PHASES, 0.0)
    total = 0.0
    for (file, _, name), (_, _, own, cumulative, _) in table.items():
        total += own
        for phase, function in PHASES.items():
            if name == function and file.startswith(OURS):
                by_phase[phase] += cumulative
    per_job = {phase: 1000 * seconds / jobs for phase, seconds in by_phase.items()}
    per_job["all of it (profiled)"] = 1000 * total / jobs
    top = sorted(table.items(), key=lambda item: -item[1][2])[:20]
    functions = [
        [f"{Path(file).name}:{line}({name})", 1000 * own / jobs, 1000 * cumulative / jobs]
        for (file, line, name), (_, _, own, cumulative, _) in top
    ]
    return per_job, functions


def measure(run: Run, opts: Options) -> dict[str, Any]:
    stack = start_gateway(
        run,
        pg_url=opts.pg_url,
        redis_url=opts.redis_url,
        latency=opts.latency,
        simulator_cache=True,
    )
    stack.start_api(ready_path="/readyz")
    key = stack.create_key("bench")
    run.log(f"submitting {opts.warmup + 2 * opts.jobs} jobs (no worker running) ...")
    ids = submit(stack, key, opts.warmup + 2 * opts.jobs)
    warm, timed, profiled = (
        ids[: opts.warmup],
        ids[opts.warmup : opts.warmup + opts.jobs],
        ids[opts.warmup + opts.jobs :],
    )

    # This process is the worker from here: its settings are the stack's, as the CLI's are.
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("FLUXGATE_")})
    from app import backends
    from app.core.settings import get_settings
    from worker import tasks

    backends.connect(get_settings())
    forward = tasks.forward_job.run
    run_jobs(forward, warm)
    run.log(f"{opts.jobs} jobs, one at a time ...")
    steps = Phases(tasks, STEPS)
    spent = run_jobs(forward, timed)
    claim_ms, finish_ms = (ms / opts.jobs for ms in steps.transactions)
    by_step = {
        "the limiter's turn (Redis)": steps.spent["wait_for_turn"] / opts.jobs,
        "the claim's transaction (commit and messages included)": claim_ms,
        "the upstream call (HTTP, multipart, base64, image check)": steps.spent["call_upstream"]
        / opts.jobs,
        "  of which the image check": steps.spent["inspect_image"] / opts.jobs,
        "the finish's transaction (commit and messages included)": finish_ms,
    }
    by_step["the rest (Celery task, logs, trace span)"] = sum(spent) / opts.jobs - sum(
        ms for name, ms in by_step.items() if name[0] != " "
    )
    run.log(f"{opts.jobs} more under the profiler ...")
    profile = cProfile.Profile(timer=time.thread_time)
    profile.enable()
    run_jobs(forward, profiled)
    profile.disable()
    if opts.profile_out is not None:
        profile.dump_stats(opts.profile_out)
    per_phase, functions = phases(profile, len(profiled))

    in_process = None
    if opts.worker_process:
        run.log(f"a worker process: {opts.jobs} jobs, then {opts.jobs} empty messages ...")
        in_process = in_a_worker_process(stack, key, opts.jobs, opts.warmup)

    succeeded = stack.sql("SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0]
    return {
        "options": {"jobs": opts.jobs, "latency": opts.latency, "warmup": opts.warmup},
        "worker_process_cpu_ms": in_process,
        "cpu_ms_per_job": dist(spent),
        "steps_ms_per_job": by_step,
        "phases_ms_per_job_profiled": per_phase,
        "top_functions_own_ms_per_job_profiled": functions,
        "succeeded": succeeded,
        "submitted": len(ids) + (opts.warmup + opts.jobs if in_process else 0),
    }


def in_a_worker_process(stack: Stack, key: str, count: int, warmup: int) -> dict[str, float]:
    """CPU ms of a worker process: idle (per second), per job, per message of the empty task;
    ``warmup`` jobs and as many empty messages go first, not counted."""
    from app.core.queue import JOBS_QUEUE, celery_app

    broker = redis.Redis.from_url(stack.env["FLUXGATE_REDIS_URL"])
    broker.delete(JOBS_QUEUE)  # the passes above used the jobs, not their messages
    env = {k: v for k, v in stack.env.items() if k != "FLUXGATE_WORKER_CONCURRENCY"}
    worker = stack.start("worker", [sys.executable, "-m", "bench.worker_cpu", "--serve"], env)
    stack.wait_consuming([worker])

    def drained() -> bool:
        # Twice, apart: kombu takes a message off the list before it records it as unacked.
        for attempt in range(2):
            if broker.llen(JOBS_QUEUE) or broker.hlen(UNACKED):
                return False
            if attempt == 0:
                time.sleep(0.1)
        return True

    def run_jobs(number: int) -> None:
        ids = submit(stack, key, number)
        ended = "SELECT count(*) FROM jobs WHERE id IN :ids AND status = 'succeeded'"
        wait_for(
            lambda: stack.sql(ended, ids=ids)[0][0] == number and drained(),
            timeout=120,
            what="the jobs to succeed",
        )

    def send_empty(number: int) -> None:
        for _ in range(number):
            celery_app.send_task(EMPTY_TASK, queue=JOBS_QUEUE)
        wait_for(drained, timeout=120, what="the empty messages to be acknowledged")

    if warmup:
        run_jobs(warmup)
        send_empty(warmup)

    idle_seconds = 2.0
    before = process_cpu(worker)
    time.sleep(idle_seconds)
    idle = process_cpu(worker) - before

    before = process_cpu(worker)
    run_jobs(count)
    jobs = process_cpu(worker) - before

    before = process_cpu(worker)
    send_empty(count)
    empty = process_cpu(worker) - before
    worker.stop()
    return {
        "idle_per_second": idle * 1000 / idle_seconds,
        "per_job": jobs * 1000 / count,
        "per_empty_message": empty * 1000 / count,
    }


def process_cpu(process: Process) -> float:
    spent = cpu_seconds(process.pid)
    if spent is None:
        raise BenchError(f"{process.name} is gone: {process.log()[-2000:]}")
    return spent


def serve() -> int:
    """The worker process of :func:`in_a_worker_process`: ``fluxgate worker`` as the CLI runs
    it, with the task that does nothing registered too."""
    from app.cli.commands import main as fluxgate
    from app.core.queue import celery_app

    celery_app.task(name=EMPTY_TASK, ignore_result=True)(empty)
    return fluxgate(["worker"])


def empty() -> None:
    """The task that does nothing."""


def print_report(results: dict[str, Any]) -> None:
    o = results["options"]
    print(
        f"\nFluxgate worker CPU: flux-2-klein-4b 512x512, simulator latency {o['latency']}s "
        f"(cache on), the task run on one thread in this process"
    )
    print(f"  {describe(results['conditions'])}\n")
    cpu = results["cpu_ms_per_job"]
    print(
        "  CPU ms per job (thread CPU, {n} jobs): mean {mean:.2f}, p50 {p50:.2f}, "
        "p95 {p95:.2f}, p99 {p99:.2f}, max {max:.2f}".format(**cpu)
    )
    print("\n  by step, CPU ms per job (mean)")
    for step, ms in results["steps_ms_per_job"].items():
        print(f"    {step:<62} {ms:6.2f}")
    print("\n  under the profiler, CPU ms per job (inflated by the profiler; read as shares)")
    for phase, ms in results["phases_ms_per_job_profiled"].items():
        print(f"    {phase:<52} {ms:8.2f}")
    print("\n  functions with the most CPU of their own (profiled), ms per job: own, cumulative")
    for name, own, cumulative in results["top_functions_own_ms_per_job_profiled"]:
        print(f"    {name:<64} {own:7.3f} {cumulative:8.3f}")
    process = results["worker_process_cpu_ms"]
    if process is not None:
        print(
            "\n  a worker process (`fluxgate worker`, default concurrency), CPU ms of its threads"
        )
        for label, name in (
            ("per job, the same task run by Celery", "per_job"),
            ("per message of a task that does nothing (Celery's own part)", "per_empty_message"),
            ("idle, per second", "idle_per_second"),
        ):
            print(f"    {label:<62} {process[name]:6.2f}")
    print(f"\n  jobs succeeded {results['succeeded']} / submitted {results['submitted']}")


def run_bench(opts: Options) -> int:
    with bench_run("fluxgate-bench-worker-cpu-", keep_logs=opts.keep_logs, json=opts.json) as run:
        found = conditions()  # before anything of ours runs
        results = {"conditions": found, **measure(run, opts)}
        if opts.json:
            print(json.dumps(json_safe(results), indent=2))
        else:
            print_report(results)
        run.ok = results["succeeded"] == results["submitted"]
        return 0 if run.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else list(argv)) == ["--serve"]:
        return serve()
    opts = parse_options(argv)
    return main_wrapper(lambda: run_bench(opts))


if __name__ == "__main__":
    raise SystemExit(main())

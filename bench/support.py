"""What bench/submit_rate.py and bench/added_latency.py share with bench/throughput.py's way of
working: a gateway through the test harness (tests/harness/) on a PostgreSQL database and a
claimed Redis db of its own, everything stopped and given back on exit (Ctrl-C and SIGTERM
included), the process logs kept when a run fails; CPU time from /proc; the conditions a run
was made in (date, load average, commit), printed with its numbers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from bench.throughput import (
    BENCH_SETTINGS,
    BenchError,
    machine_cpu,
    own_cpu_seconds,
    signals_ignored,
)
from bench.throughput_report import json_safe, percentile
from tests.harness.claims import postgres_database, redis_db
from tests.harness.processes import CLOCK_TICKS, ROOT, StackError
from tests.harness.stack import Stack

__all__ = [
    "BenchError",
    "Run",
    "bench_run",
    "conditions",
    "dist",
    "group_cpu_seconds",
    "json_safe",
    "main_wrapper",
    "percentile",
    "start_gateway",
]

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"


# ---------------------------------------------------------------------------------------------
# Distributions


def dist(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, p99 and max of ``values`` (NaN for an empty list)."""
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else float("nan"),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# CPU time from /proc


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process (all its threads), None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def all_processes() -> dict[int, tuple[str, int, float]]:
    """Every live process: pid -> (command name, process group, CPU seconds so far)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        found[int(entry.name)] = (name, int(fields[2]), cpu)
    return found


def _command_line(pid: int, limit: int = 70) -> str:
    """The process's command line, its program by file name only, at most ``limit`` chars."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    words = [Path(argv[0]).name, *argv[1:]] if argv and argv[0] else []
    line = " ".join(word for word in words if word)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process of a process group: the harness starts each
    role as the leader of a group of its own, so this is the process and all its children
    (``fluxgate api --workers N``: uvicorn's supervisor and its N processes)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def postgres_backends(admin_url: str, database: str) -> dict[int, float]:
    """CPU seconds so far of each server process connected to ``database``."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pids = [
            int(row[0])
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchall()
        ]
    found = {pid: cpu_seconds(pid) for pid in pids}
    return {pid: seconds for pid, seconds in found.items() if seconds is not None}


def backends_cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU the backends alive at the end spent since ``before`` (new ones: all of theirs).
    Backends that closed in between are not counted: the pools keep theirs open."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass
class CpuWindow:
    """CPU spent between start() and stop(): by process groups (name -> pgid), by the
    PostgreSQL backends of a database, by this process (the bench client), by the whole
    machine (``rest``: what none of those spent; ``others``: the processes that spent most of
    it, e.g. Redis, PostgreSQL's own processes, other tenants), all in seconds."""

    groups: dict[str, int]
    pg_admin_url: str
    database: str
    spent: dict[str, float] = field(default_factory=dict)
    machine_busy_pct: float = float("nan")
    others: list[tuple[str, float]] = field(default_factory=list)
    _before: dict[str, float] = field(default_factory=dict)
    _backends: dict[int, float] = field(default_factory=dict)
    _machine: tuple[int, int] = (0, 0)
    _all: dict[int, tuple[str, int, float]] = field(default_factory=dict)

    def start(self) -> None:
        self._backends = postgres_backends(self.pg_admin_url, self.database)
        self._all = all_processes()
        self._machine = machine_cpu()
        self._before = {name: group_cpu_seconds(pgid) for name, pgid in self.groups.items()}
        self._before["client"] = own_cpu_seconds()

    def stop(self) -> None:
        client = own_cpu_seconds()
        self.spent = {
            name: group_cpu_seconds(pgid) - self._before[name] for name, pgid in self.groups.items()
        }
        self.spent["client"] = client - self._before["client"]
        busy, total = machine_cpu()
        elapsed = total - self._machine[1]
        self.machine_busy_pct = 100 * (busy - self._machine[0]) / elapsed if elapsed else 0.0
        backends = postgres_backends(self.pg_admin_url, self.database)
        self.spent["postgres"] = backends_cpu_delta(self._backends, backends)
        machine = (busy - self._machine[0]) / CLOCK_TICKS
        self.spent["rest"] = max(0.0, machine - sum(self.spent.values()))
        counted = set(self.groups.values())
        others: dict[str, float] = {}
        for pid, (name, group, cpu) in all_processes().items():
            if group in counted or pid in backends or pid == os.getpid():
                continue
            before = self._all.get(pid)
            spent = cpu - (before[2] if before else 0.0)
            if spent > 0:
                label = _command_line(pid) or name
                others[label] = others.get(label, 0.0) + spent
        self.others = sorted(others.items(), key=lambda item: -item[1])[:6]


# ---------------------------------------------------------------------------------------------
# The conditions of a run


def conditions() -> dict[str, Any]:
    """When, on what, at which commit: printed with the numbers, which mean little without."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "cpus": os.cpu_count(),
        "commit": (commit or "?") + (" (modified)" if dirty else ""),
    }


def describe(found: Mapping[str, Any]) -> str:
    return (
        f"{found['date']}, commit {found['commit']}, {found['cpus']} CPUs, "
        f"load average {found['loadavg']}"
    )


# ---------------------------------------------------------------------------------------------
# A run: its logs, its clean-up


@dataclass
class Run:
    """A bench run's log folder and clean-up; ``ok`` once it succeeded (its logs then go)."""

    log_dir: Path
    json: bool
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    ok: bool = False

    def log(self, message: str) -> None:
        """A progress line: to stdout, or stderr when stdout is the JSON."""
        print(message, file=sys.stderr if self.json else sys.stdout, flush=True)


@contextlib.contextmanager
def bench_run(prefix: str, *, keep_logs: bool, json: bool) -> Iterator[Run]:
    """A run whose clean-up happens whatever ends it (a second Ctrl-C included); its process
    logs are removed after a good run unless ``keep_logs``, and kept after a failed one."""
    run = Run(Path(tempfile.mkdtemp(prefix=prefix)), json)
    run.log(f"setting up (logs in {run.log_dir}) ...")
    try:
        yield run
    except BaseException:
        print(f"bench failed; process logs are in {run.log_dir}", file=sys.stderr)
        raise
    finally:
        with signals_ignored():
            run.cleanup.close()
        if run.ok and not keep_logs:
            shutil.rmtree(run.log_dir, ignore_errors=True)
        else:
            run.log(f"logs kept in {run.log_dir}")


def start_gateway(
    run: Run,
    *,
    pg_url: str,
    redis_url: str,
    latency: float,
    simulator_cache: bool,
    settings: Mapping[str, str] | None = None,
) -> Stack:
    """A migrated gateway with its simulator answering (no API, worker or beat yet), on a new
    database ``fluxgate_bench_<hex>`` and an empty claimed Redis db; undone by ``run``'s
    clean-up in reverse: processes stopped, Redis flushed, the database dropped."""
    database_url = run.cleanup.enter_context(postgres_database(pg_url, prefix="fluxgate_bench"))
    redis = run.cleanup.enter_context(
        redis_db(redis_url, owner="bench", ttl_seconds=6 * 3600, only_empty=True)
    )
    stack = Stack(
        run.log_dir,
        latency=latency,
        base_settings={
            **BENCH_SETTINGS,
            # Read by the simulator alone (the gateway's processes ignore it).
            "simulator_cache": "true" if simulator_cache else "false",
        },
        database_url=database_url,
        redis=redis,
        **(settings or {}),
    )
    run.cleanup.callback(stack.close)
    return stack


# ---------------------------------------------------------------------------------------------
# main()


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main_wrapper(body: Callable[[], int]) -> int:
    """Run ``body`` with SIGTERM and SIGHUP turned into a clean exit; a failed run is one
    line on stderr and exit status 1, Ctrl-C 130."""
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    try:
        return body()
    except (BenchError, StackError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        return 130


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)

"""Chaos under load: a real PostgreSQL + Redis gateway takes a steady stream of jobs while its
upstream misbehaves and its parts are broken one after another; then it accounts for every job.

Phases, each under the same load (``--rate`` submissions a second, unique prompts):

  steady            nothing broken (the simulator's fault mix runs throughout)
  worker SIGKILL    one of the two workers killed mid-call; a new one started 3 s later
  Redis flush       every broker message lost (FLUSHDB of the gateway's Redis db)
  Redis outage      Redis unreachable for --outage seconds (a proxy in front of it goes down)
  PostgreSQL outage PostgreSQL unreachable for --outage seconds (the proxy, or with
                    --real-postgres the server itself stopped and started: every database)
  SIGTERM drain     one worker stopped gracefully; a new one started
  drain             no more submissions; every accepted job must end

and prints one table: per phase, submissions and how they were answered (5xx split into 503,
which is the right answer while a dependency is down, and anything else, which is a bug), and
the recovery time (from the fault's end until a job submitted then has succeeded), the jobs
given two images by upstream and the upstream calls nobody took (a worker killed or timed out
mid-call); then jobs accepted, final, lost, charged more than once by Fluxgate, and given an
image by upstream more than once (what Cloudflare would charge twice).

    python -m bench.chaos [--rate 15] [--phase-seconds 12] [--outage 10] [--json]

Exit status 0 when nothing was lost and Fluxgate charged nothing twice, 1 otherwise. Too slow
for every CI run (about 2 minutes); the last results and the method are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/chaos.py``: ``bench`` and ``tests`` are in the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.harness.faultproxy import FaultProxy, Proxies
from tests.harness.processes import Process
from tests.harness.stack import Stack

FINAL = {"succeeded", "failed", "canceled"}
# Upstream faults the gateway retries (hang outlasts its 3 s timeout).
FAULT_MIX = "3040=0.04,3007=0.02,500=0.02,502=0.02,503=0.02,nonjson=0.02,hang=0.01"


@dataclass
class Phase:
    name: str
    started: float = 0.0
    fault_ended: float = 0.0
    recovered: float | None = None
    answers: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0

    def row(self) -> dict[str, Any]:
        server_errors = sum(n for status, n in self.answers.items() if status >= 500)
        return {
            "phase": self.name,
            "submitted": sum(self.answers.values()) + self.transport_errors,
            "accepted": self.answers[202],
            "503": self.answers[503],
            "other 5xx": server_errors - self.answers[503],
            "other answers": {
                str(status): n
                for status, n in sorted(self.answers.items())
                if status not in (202, 503) and status < 500
            },
            "no answer": self.transport_errors,
            "recovery s": None
            if self.recovered is None
            else round(self.recovered - self.fault_ended, 1),
        }


class Load:
    """Submits jobs at a steady rate from a few threads; records every answer by phase."""

    def __init__(self, client_factory: Callable[[], httpx.Client], rate: float) -> None:
        self._client_factory = client_factory
        self._interval = 1.0 / rate
        self.phase = Phase("setup")
        self.accepted: dict[str, tuple[str, str]] = {}  # job id -> (prompt, phase)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(4)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, offset: int) -> None:
        next_at = time.monotonic() + offset * self._interval
        with self._client_factory() as client:
            while not self._stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += 4 * self._interval
                prompt = f"chaos {uuid.uuid4().hex}"
                phase = self.phase
                try:
                    response = client.post(
                        "/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512}
                    )
                except httpx.HTTPError:
                    with self._lock:
                        phase.transport_errors += 1
                    continue
                with self._lock:
                    phase.answers[response.status_code] += 1
                    if response.status_code == 202:
                        self.accepted[response.json()["id"]] = (prompt, phase.name)


def recovered(client: httpx.Client, deadline: float) -> float | None:
    """When a job submitted now has succeeded (None if not before ``deadline``)."""
    while time.monotonic() < deadline:
        try:
            response = client.post(
                "/v1/jobs",
                json={"prompt": f"canary {uuid.uuid4().hex}", "width": 512, "height": 512},
                headers={"Prefer": "wait=20"},
            )
            if response.status_code == 200 and response.json()["status"] == "succeeded":
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


@contextmanager
def postgres_stopped(real: bool, proxy: FaultProxy) -> Iterator[None]:
    if not real:
        with proxy.outage():
            yield
        return
    version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True, check=True)
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", version.stdout.split()[0], "main"]
    subprocess.run([*cluster, "stop", "-m", "fast"], check=True)
    try:
        yield
    finally:
        subprocess.run([*cluster, "start"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--rate", type=float, default=15.0, help="submissions a second")
    parser.add_argument("--phase-seconds", type=float, default=12.0)
    parser.add_argument(
        "--outage", type=float, default=10.0, help="seconds Redis/PostgreSQL are gone"
    )
    parser.add_argument("--latency", type=float, default=0.5, help="simulator seconds per image")
    parser.add_argument("--real-postgres", action="store_true", help="stop the server itself")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)

    log_dir = Path(tempfile.mkdtemp(prefix="fluxgate-chaos-"))
    stack = Stack(
        log_dir,
        backend="postgres",
        latency=opts.latency,
        faults=FAULT_MIX,
        upstream_max_attempts="8",
        requeue_after_seconds="10",
        sweep_interval_seconds="2",
        job_lease_seconds="30",
        upstream_timeout_seconds="3",
        upstream_rpm="100000",
    )
    proxies = Proxies(stack, database=not opts.real_postgres)
    pg_proxy, redis_proxy = proxies.postgres, proxies.redis
    phases: list[Phase] = []
    try:
        stack.start_api()
        workers: list[Process] = [stack.start_worker(32), stack.start_worker(32)]
        stack.start_beat()
        key = stack.create_key("chaos")
        load = Load(lambda: stack.client(key), opts.rate)
        canary = stack.client(key)

        def phase(name: str, fault: Callable[[], None]) -> None:
            current = Phase(name, started=time.monotonic())
            load.phase = current
            phases.append(current)
            log(f"{name}...")
            fault()
            current.fault_ended = time.monotonic()
            current.recovered = recovered(canary, current.fault_ended + 120)
            time.sleep(max(0.0, current.started + opts.phase_seconds - time.monotonic()))

        def kill_worker() -> None:
            time.sleep(2)
            workers.pop(0).kill()
            time.sleep(3)
            workers.append(stack.start_worker(32))

        def flush_redis() -> None:
            time.sleep(2)
            stack.flush_broker()  # FLUSHDB: messages, counters, the limiter's state

        def redis_outage() -> None:
            time.sleep(2)
            with redis_proxy.outage():
                time.sleep(opts.outage)

        def postgres_outage() -> None:
            time.sleep(2)
            with postgres_stopped(opts.real_postgres, pg_proxy):
                time.sleep(opts.outage)

        def drain_worker() -> None:
            time.sleep(2)
            workers.pop(0).stop(timeout=60)
            workers.append(stack.start_worker(32))

        load.start()
        phase("steady", lambda: time.sleep(2))
        phase("worker SIGKILL", kill_worker)
        phase("Redis flush", flush_redis)
        phase("Redis outage", redis_outage)
        phase(
            "PostgreSQL outage" + (" (server stopped)" if opts.real_postgres else ""),
            postgres_outage,
        )
        phase("SIGTERM drain", drain_worker)
        load.stop()
        log(f"draining {len(load.accepted)} accepted jobs...")
        results = account(stack, load.accepted, deadline=time.monotonic() + 300)
        results["phases"] = [
            {
                **phase.row(),
                "images twice": results["images twice by phase"].get(phase.name, 0),
                "abandoned calls": results["abandoned calls by phase"].get(phase.name, 0),
            }
            for phase in phases
        ]
        results["settings"] = {
            "rate": opts.rate,
            "phase_seconds": opts.phase_seconds,
            "outage_seconds": opts.outage,
            "latency": opts.latency,
            "faults": FAULT_MIX,
            "real_postgres": opts.real_postgres,
        }
        print(json.dumps(results, indent=2) if opts.json else table(results))
        canary.close()
        return 0 if results["lost"] == 0 and results["charged twice"] == 0 else 1
    finally:
        stack.close()
        proxies.close()


def account(
    stack: Stack, accepted: dict[str, tuple[str, str]], *, deadline: float
) -> dict[str, Any]:
    """Wait until every accepted job is final (or the deadline), then count: by status, the
    ledger's duplicates, and per job what the upstream did (from the simulator's records)."""
    ids = list(accepted)

    def statuses() -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            found.update(job_statuses(stack, ids[start : start + 500]))
        return found

    while time.monotonic() < deadline:
        current = statuses()
        if all(current.get(job) in FINAL for job in ids):
            break
        time.sleep(2)
    current = statuses()
    by_status = Counter(current.get(job, "missing") for job in ids)
    twice = stack.sql(
        "SELECT count(*) FROM (SELECT job_id FROM charges GROUP BY job_id HAVING count(*) > 1) t"
    )
    calls: Counter[int] = Counter()
    images_twice: Counter[str] = Counter()  # by phase
    abandoned: Counter[str] = Counter()
    for prompt, phase in accepted.values():
        records = stack.simulator.requests_for(prompt)
        calls[len(records)] += 1
        # A picture taken by the gateway: what Cloudflare certainly charges for.
        if sum(1 for r in records if r["status"] == 200 and r["fault"] == "ok") > 1:
            images_twice[phase] += 1
        abandoned[phase] += sum(1 for record in records if record["status"] == 499)
    return {
        "accepted": len(ids),
        "final": sum(n for status, n in by_status.items() if status in FINAL),
        "by status": dict(by_status),
        "lost": sum(n for status, n in by_status.items() if status not in FINAL),
        "charged twice": int(twice[0][0]),
        "called upstream twice": sum(images_twice.values()),
        "images twice by phase": dict(images_twice),
        "abandoned calls by phase": dict(abandoned),
        "upstream calls per job": dict(sorted(calls.items())),
    }


def job_statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    placeholders = ", ".join(f":id{n}" for n in range(len(ids)))
    params = {f"id{n}": job for n, job in enumerate(ids)}
    query = f"SELECT id, status FROM jobs WHERE id IN ({placeholders})"  # noqa: S608
    return {str(job): str(status) for job, status in stack.sql(query, **params)}


COLUMNS = [  # (title, width, key)
    ("phase", 34, "phase"),
    ("submitted", 10, "submitted"),
    ("accepted", 10, "accepted"),
    ("503", 6, "503"),
    ("other 5xx", 11, "other 5xx"),
    ("no answer", 11, "no answer"),
    ("recovery s", 12, "recovery s"),
    ("images twice", 14, "images twice"),
    ("abandoned", 11, "abandoned calls"),
]


def table(results: dict[str, Any]) -> str:
    def cells(values: list[Any]) -> str:
        first, *rest = zip(COLUMNS, values, strict=True)
        return f"{first[1]!s:<{first[0][1]}}" + "".join(
            f"{'-' if value is None else value!s:>{column[1]}}" for column, value in rest
        )

    lines = [cells([title for title, _, _ in COLUMNS]) + "  other answers"]
    for row in results["phases"]:
        lines.append(cells([row[key] for _, _, key in COLUMNS]) + f"  {row['other answers']}")
    abandoned = sum(results["abandoned calls by phase"].values())
    lines += [
        "",
        f"jobs accepted                              {results['accepted']}",
        f"jobs final                                 {results['final']}  {results['by status']}",
        f"jobs lost                                  {results['lost']}",
        f"jobs charged twice by Fluxgate             {results['charged twice']}",
        f"jobs given two images by upstream          {results['called upstream twice']}",
        f"upstream calls nobody took (abandoned)     {abandoned}",
        f"upstream calls per job (calls: jobs)       {results['upstream calls per job']}",
    ]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

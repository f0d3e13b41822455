"""The throughput benchmark's results: what a run measured turned into numbers (distributions,
slot use, per-job overheads), printed as a table or made fit for JSON."""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.throughput import Options, Submitted

DEFAULT_WORKER_CONCURRENCY = 64  # Settings.worker_concurrency


# ---------------------------------------------------------------------------------------------
# Distributions


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Dist:
    """A distribution in brief: how many values, their mean, percentiles and maximum."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=max(values),
        )


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class JobRow:
    """A row of the jobs table, read after the run."""

    id: str
    status: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    upstream_ms: int | None
    error_code: str | None
    error_message: str | None


def ms(delta_seconds: float) -> float:
    return delta_seconds * 1000


def mean_overlap(intervals: Sequence[tuple[float, float]], low: float, high: float) -> float:
    """Time-weighted mean number of the intervals open during [low, high]."""
    covered = sum(max(0.0, min(end, high) - max(start, low)) for start, end in intervals)
    return covered / (high - low)


def saturation(
    done: Sequence[tuple[float, float, float, int]],
    samples: Sequence[tuple[float, int]],
    slots: int,
) -> dict[str, float] | None:
    """Where the worker slots went while jobs were waiting for them.

    The window runs from the creation of job number slots + 1 to the start of the last job:
    the queue was (nearly) never empty then, so all ``slots`` could have been calling the
    simulator. Reported as time-weighted means over that window: jobs between started_at and
    completed_at (DB), jobs inside the upstream call (the last upstream_ms before completed_at)
    and the simulator's sampled in_flight.
    """
    created = sorted(created for created, _, _, _ in done)
    if len(created) <= slots:
        return None
    low, high = created[slots], max(started for _, started, _, _ in done)
    if high - low < 1.0:
        return None
    running = [(started, completed) for _, started, completed, _ in done]
    calling = [(completed - up / 1000, completed) for _, _, completed, up in done]
    in_window = [n for t, n in samples if low <= t <= high]
    return {
        "window_s": high - low,
        "slots": float(slots),
        "db_running_mean": mean_overlap(running, low, high),
        "worker_upstream_mean": mean_overlap(calling, low, high),
        "sim_sampled_mean": sum(in_window) / len(in_window) if in_window else math.nan,
    }


def dispatch_waits(rows: Sequence[JobRow], slots: int) -> list[float]:
    """Queue wait (ms) of the jobs that found a free worker slot when they were created.

    A job found a slot free if, counting itself, no more than ``slots`` jobs were in the
    system (created and not yet completed) at its created_at; its wait is then the time the
    gateway needed to hand it to a worker, not time spent behind other jobs.
    """
    created = sorted(row.created_at.timestamp() for row in rows)
    completed = sorted(row.completed_at.timestamp() for row in rows if row.completed_at)
    waits = []
    for row in rows:
        if row.started_at is None:
            continue
        at = row.created_at.timestamp()
        in_system = bisect.bisect_right(created, at) - bisect.bisect_right(completed, at)
        if in_system <= slots:
            waits.append(ms(row.started_at.timestamp() - at))
    return waits


def build_results(
    opts: Options,
    submitted: Submitted,
    api_counts: dict[str, int],
    rows: list[JobRow],
    samples: Sequence[tuple[float, int]],
    sample_errors: int,
    sim_stats: dict[str, Any],
    usage: dict[str, Any],
    log_problems: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The results of a run, as printed with --json: ``rows`` are the jobs table, ``samples``
    the simulator's (wall time, in_flight), ``usage`` what the processes and the machine
    spent, ``log_problems`` the warnings in the process logs."""
    ours = set(submitted.job_ids)
    rows = [row for row in rows if row.id in ours]
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    # (created, started, completed, upstream ms) of every succeeded job, in seconds.
    done = [
        (
            row.created_at.timestamp(),
            row.started_at.timestamp(),
            row.completed_at.timestamp(),
            row.upstream_ms or 0,
        )
        for row in rows
        if row.status == "succeeded" and row.started_at and row.completed_at
    ]
    last_completion = max((completed for _, _, completed, _ in done), default=math.nan)
    wall = last_completion - submitted.started
    overhead = [ms(completed - created) - up for created, _, completed, up in done]
    in_worker = [ms(completed - started) - up for _, started, completed, up in done]
    queue_wait = [
        ms(row.started_at.timestamp() - row.created_at.timestamp())
        for row in rows
        if row.started_at is not None
    ]
    window = [n for t, n in samples if submitted.started <= t <= last_completion]
    saturated = saturation(done, samples, opts.slots)
    per_second: dict[int, list[int]] = {}
    for t, n in samples:
        if submitted.started <= t <= last_completion:
            per_second.setdefault(int(t - submitted.started), []).append(n)
    failures = [
        {"id": row.id, "status": row.status, "attempts": row.attempts, "error": row.error_code}
        | {"message": (row.error_message or "")[:200]}
        for row in rows
        if row.status != "succeeded"
    ]
    submit_span = submitted.finished - submitted.started
    return {
        "config": {
            "jobs": opts.jobs,
            "latency_s": opts.latency,
            "concurrency": opts.concurrency,
            "worker_slots": opts.slots,
            "workers": opts.workers,
            "submitters": opts.submitters,
            "warmup": opts.warmup,
            "size": f"{opts.width}x{opts.height}",
            "cpus": os.cpu_count(),
            "settings": opts.settings,
            "loadavg_before": usage["loadavg_before"],
            "pg_connections_before": usage["pg_connections_before"],
        },
        "throughput": {
            "jobs_per_s": len(done) / wall if wall > 0 else math.nan,
            "ideal_jobs_per_s": opts.slots / opts.latency if opts.latency > 0 else math.inf,
            "wall_s": wall,
            "submit_rate_per_s": len(submitted.latencies_ms) / submit_span
            if submit_span > 0
            else math.nan,
            "submit_s": submit_span,
            "submit_latency_ms": asdict(Dist.of(submitted.latencies_ms)),
        },
        "in_flight": {
            "sim_max": sim_stats.get("max_in_flight"),
            "sampled_mean": sum(window) / len(window) if window else math.nan,
            "sampled_p50": percentile(window, 50),
            "sampled_max": max(window, default=0),
            "per_second_mean": [
                round(sum(per_second[k]) / len(per_second[k]), 1) for k in sorted(per_second)
            ],
            "samples": len(window),
            "sample_errors": sample_errors,
            "saturated": saturated,
            "upstream_requests": sim_stats.get("requests"),
            "upstream_by_status": sim_stats.get("by_status"),
        },
        "per_job_ms": {
            "overhead": asdict(Dist.of(overhead)),
            "queue_wait": asdict(Dist.of(queue_wait)),
            "dispatch_wait": asdict(Dist.of(dispatch_waits(rows, opts.slots))),
            "in_worker_overhead": asdict(Dist.of(in_worker)),
            "upstream": asdict(Dist.of([float(up) for _, _, _, up in done])),
        },
        "jobs": {
            "submitted": len(submitted.job_ids),
            "output_bytes_mean": usage["output_bytes_mean"],
            "submit_errors": len(submitted.errors),
            "submit_error_samples": submitted.errors[:5],
            "by_status_db": by_status,
            "final_by_status_api": api_counts,
            "retried": sum(1 for row in rows if row.attempts > 1),
            "failures": failures[:20],
            "failure_count": len(failures),
        },
        "resources": usage["resources"],
        "log_problems": log_problems,
    }


# ---------------------------------------------------------------------------------------------
# Output


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_table(results: dict[str, Any]) -> None:
    cfg, tp, fl = results["config"], results["throughput"], results["in_flight"]
    jobs, res, per_job = results["jobs"], results["resources"], results["per_job_ms"]
    concurrency = cfg["concurrency"] or f"default ({DEFAULT_WORKER_CONCURRENCY})"
    print(
        f"Fluxgate throughput: {cfg['jobs']} jobs {cfg['size']}, upstream latency "
        f"{cfg['latency_s']}s, {cfg['workers']} worker(s) x concurrency {concurrency}, "
        f"{cfg['submitters']} submitters, {cfg['cpus']} CPUs "
        f"(load before: {cfg['loadavg_before']}; PostgreSQL connections before: "
        f"{cfg['pg_connections_before']})"
    )
    if cfg["settings"]:
        print(f"extra settings: {cfg['settings']}")
    print()
    rows: list[tuple[str, str]] = [
        ("jobs/s (first submit -> last completion)", _f(tp["jobs_per_s"], 2)),
        ("  ideal (slots / latency)", _f(tp["ideal_jobs_per_s"], 1)),
        ("  wall time s", _f(tp["wall_s"], 2)),
        ("submit rate /s (API sustained)", _f(tp["submit_rate_per_s"], 1)),
        ("  submit time s", _f(tp["submit_s"], 2)),
        (
            "  POST /v1/jobs ms p50 / p99 / max",
            " / ".join(_f(tp["submit_latency_ms"][k]) for k in ("p50", "p99", "max")),
        ),
        ("upstream in flight: simulator max", _f(fl["sim_max"])),
        (
            "  sampled every 100 ms: mean / p50 / max",
            f"{_f(fl['sampled_mean'])} / {_f(fl['sampled_p50'])} / {_f(fl['sampled_max'])}"
            f"  ({fl['samples']} samples)",
        ),
        (
            "  per-second mean",
            " ".join(f"{x:.0f}" for x in fl["per_second_mean"]),
        ),
    ]
    sat = fl["saturated"]
    if sat:
        rows.append(
            (
                f"  queue non-empty ({sat['window_s']:.1f} s): slots / DB running",
                f"{sat['slots']:.0f} / {sat['db_running_mean']:.1f} / "
                f"in upstream call {sat['worker_upstream_mean']:.1f} / "
                f"simulator in_flight {sat['sim_sampled_mean']:.1f}",
            )
        )
    rows += [
        (
            "  upstream requests (by status)",
            f"{fl['upstream_requests']} {fl['upstream_by_status']}",
        ),
    ]
    for label, key in (
        ("overhead ms (done - created - upstream)", "overhead"),
        ("  of which queue wait (started - created)", "queue_wait"),
        ("    queue wait when a slot was free", "dispatch_wait"),
        ("  in-worker (done - started - upstream)", "in_worker_overhead"),
        ("upstream_ms", "upstream"),
    ):
        dist = per_job[key]
        rows.append(
            (
                f"{label} p50/p90/p99/max",
                " / ".join(_f(dist[k], 0) for k in ("p50", "p90", "p99", "max")),
            )
        )
    rows += [
        ("jobs by status (DB)", str(jobs["by_status_db"])),
        ("  output image bytes (mean, stored in PostgreSQL)", _f(jobs["output_bytes_mean"], 0)),
        ("  retried (attempts > 1)", _f(jobs["retried"])),
        ("  submit errors", _f(jobs["submit_errors"])),
    ]
    for name, info in res["processes"].items():
        rows.append(
            (
                f"{name}: peak RSS MiB / CPU s / CPU ms per job",
                f"{_f(info['peak_rss_mib'])} / {_f(info['cpu_s'], 2)} / "
                f"{_f(1000 * info['cpu_s'] / cfg['jobs'], 1)}",
            )
        )
    rows += [
        ("bench client CPU s", _f(res["bench_client_cpu_s"], 2)),
        ("machine CPU busy % (all cores, run window)", _f(res["machine_busy_pct"])),
        (
            "PostgreSQL: sessions / commits / active s",
            f"{_f(res['db'].get('sessions'), 0)} / {_f(res['db'].get('commits'), 0)} / "
            f"{_f(res['db'].get('active_ms', math.nan) / 1000, 2)}",
        ),
        (
            "  connections, sampled peak: bench database / server",
            f"{_f(res['db'].get('connections_peak'))} / {_f(res['db'].get('server_peak'))}",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if jobs["failures"]:
        print(f"\nFailures ({jobs['failure_count']}):")
        for failure in jobs["failures"]:
            print(f"  {failure}")
    if jobs["submit_error_samples"]:
        print("\nSubmit errors (first 5):")
        for error in jobs["submit_error_samples"]:
            print(f"  {error}")
    if results["log_problems"]:
        print("\nWarnings/errors in process logs:")
        for name, info in results["log_problems"].items():
            print(f"  {name}: {info['count']} lines, first:")
            for line in info["first"]:
                print(f"    {line[:300]}")


def json_safe(value: Any) -> Any:
    """NaN and infinities (no data, latency 0) become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value

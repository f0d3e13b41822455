"""Added-latency benchmark: how much longer one klein call takes through Fluxgate than straight
to the upstream, each gateway job beside a direct call to the same simulator, from the same
client, in the same run.

Sets up a gateway through the test harness (a new PostgreSQL database, a claimed Redis db, the
simulator at ``--latency`` seconds, with ``--cache`` unless ``--no-sim-cache``, the API and one
worker as an operator runs them; no beat), then:

- sequential: ``--sequential N`` pairs, one call at a time: ``POST /v1/jobs`` with
  ``Prefer: wait=60`` (answered 200 with the finished job), then the same picture asked of the
  simulator directly (multipart, as the worker asks it);
- open loop: ``--rate R`` pairs a second for ``--duration D`` seconds, each pair sent at its
  scheduled time whatever the answers before it (the two calls of a pair at once).

Prints, per mode, p50/p95/p99/max of the gateway's end-to-end time, of the direct call's, and of
their difference pair by pair (the latency Fluxgate adds), and the split the Job's ``timings``
block gives (queue_ms, upstream_ms, overhead_ms) with the ``Server-Timing`` header checked
against it. With ``--trace``, the gateway exports its spans to a receiver in this process, and
each job's time is split into steps by its trace (tests/harness/otlp.py: job_timeline).
Everything is torn down afterwards, always.

    python bench/added_latency.py --sequential 30 --rate 30 --duration 20
    python bench/added_latency.py --mode open-loop --rate 30 --duration 20 --json

Exit status: 0 if every job succeeded and every direct call answered 200, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/added_latency.py``: ``bench`` and ``tests`` are in the root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    BenchError,
    Run,
    bench_run,
    conditions,
    describe,
    dist,
    group_cpu_seconds,
    json_safe,
    main_wrapper,
    start_gateway,
)
from bench.throughput import image_size, positive_int
from tests.harness.otlp import (
    TIMELINE_STEPS,
    UPSTREAM_STEP,
    OtlpReceiver,
    SpanRecord,
    job_timeline,
)
from tests.harness.stack import SIM_TOKEN, Stack

MODEL = "flux-2-klein-4b"
PROMPT = "a lighthouse at dusk, oil painting"
WAIT_SECONDS = 60  # the contract's most
MODES = ("sequential", "open-loop")


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    modes: tuple[str, ...]
    sequential: int
    rate: float
    duration: float
    latency: float
    width: int
    height: int
    warmup: int
    fetch_image: bool
    simulator_cache: bool
    trace: bool
    json: bool
    keep_logs: bool
    pg_url: str
    redis_url: str


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/added_latency.py",
        description="The latency Fluxgate adds to one klein call, beside direct calls.",
    )
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="sequential, open-loop or both (default both, sequential first)",
    )
    parser.add_argument(
        "--sequential",
        type=positive_int,
        default=30,
        help="pairs in the sequential mode (default 30)",
    )
    parser.add_argument(
        "--rate", type=_positive_float, default=30.0, help="open loop: pairs a second (default 30)"
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=20.0,
        help="open loop: seconds of sending (default 20)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=1.0,
        help="simulator seconds per upstream call (default 1.0)",
    )
    parser.add_argument("--size", type=image_size, default=(512, 512), help="WxH (default 512x512)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="sequential pairs sent first and not counted (default 3)",
    )
    parser.add_argument(
        "--fetch-image",
        action="store_true",
        help="the gateway's time includes GET /v1/jobs/{id}/image, the direct call's the "
        "base64 decoding, as a client that wants the picture does",
    )
    parser.add_argument(
        "--no-sim-cache",
        dest="simulator_cache",
        action="store_false",
        help="the simulator draws every picture (about 10 ms of CPU a call) instead of "
        "answering from its cache",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="trace the gateway (OpenTelemetry, to a receiver in this process) and print where"
        " each job's time went, step by step; tracing adds its own cost to every step",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the process logs after a good run"
    )
    parser.add_argument(
        "--pg-url",
        default=PG_ADMIN_URL,
        help="PostgreSQL admin URL used to create and drop the bench database",
    )
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis server")
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error("--latency must be >= 0")
    return Options(
        modes=MODES if args.mode == "both" else (args.mode,),
        sequential=args.sequential,
        rate=args.rate,
        duration=args.duration,
        latency=args.latency,
        width=args.size[0],
        height=args.size[1],
        warmup=max(0, args.warmup),
        fetch_image=args.fetch_image,
        simulator_cache=args.simulator_cache,
        trace=args.trace,
        json=args.json,
        keep_logs=args.keep_logs,
        pg_url=args.pg_url,
        redis_url=args.redis_url.rstrip("/"),
    )


# ---------------------------------------------------------------------------------------------
# One pair: a job through the gateway, the same call made directly


@dataclass
class Pair:
    """One gateway job and its direct twin; times in ms, ``None`` where a call failed."""

    scheduled: float  # perf_counter seconds the pair was due (open loop) or sent (sequential)
    job_id: str | None = None
    gateway_ms: float | None = None
    direct_ms: float | None = None
    late_ms: float = 0.0  # how long after ``scheduled`` the gateway call was sent
    timings: dict[str, int | None] = field(default_factory=dict)
    server_timing: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse_server_timing(header: str) -> dict[str, float]:
    """``queue;dur=12;desc="...", upstream;dur=1003;...`` -> {"queue": 12.0, ...}."""
    found = {}
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur":
                found[name] = float(value)
    return found


class Caller:
    """The client: one httpx.AsyncClient (keep-alive to both servers) for every call."""

    def __init__(self, stack: Stack, key: str, opts: Options) -> None:
        self.opts = opts
        self.api_url = stack.api_url
        self.direct_url = (
            f"{stack.simulator.url}/client/v4/accounts/bench/ai/run/@cf/black-forest-labs/{MODEL}"
        )
        self.key = key
        self.client = httpx.AsyncClient(
            timeout=WAIT_SECONDS + 30, limits=httpx.Limits(max_connections=None)
        )
        self.run_id = uuid.uuid4().hex[:8]

    async def close(self) -> None:
        await self.client.aclose()

    async def gateway(self, pair: Pair, number: int) -> None:
        body = {
            "model": MODEL,
            "prompt": f"{PROMPT} ({self.run_id} {number})",
            "width": self.opts.width,
            "height": self.opts.height,
        }
        headers = {"Authorization": f"Bearer {self.key}", "Prefer": f"wait={WAIT_SECONDS}"}
        began = time.perf_counter()
        pair.late_ms = (began - pair.scheduled) * 1000
        try:
            response = await self.client.post(f"{self.api_url}/v1/jobs", json=body, headers=headers)
            job = response.json() if response.status_code in (200, 202) else {}
            if response.status_code != 200 or job.get("status") != "succeeded":
                pair.errors.append(
                    f"gateway: HTTP {response.status_code} {job.get('status')}:"
                    f" {response.text[:200]}"
                )
                return
            if self.opts.fetch_image:
                image = await self.client.get(
                    f"{self.api_url}/v1/jobs/{job['id']}/image",
                    headers={"Authorization": f"Bearer {self.key}"},
                )
                if image.status_code != 200:
                    pair.errors.append(f"gateway image: HTTP {image.status_code}")
                    return
        except httpx.HTTPError as error:
            pair.errors.append(f"gateway: {type(error).__name__}: {error}")
            return
        pair.gateway_ms = (time.perf_counter() - began) * 1000
        pair.job_id = job["id"]
        pair.timings = dict(job["timings"])
        pair.server_timing = parse_server_timing(response.headers.get("server-timing", ""))

    async def direct(self, pair: Pair, number: int) -> None:
        fields = {
            "prompt": (None, f"{PROMPT} ({self.run_id} direct {number})"),
            "width": (None, str(self.opts.width)),
            "height": (None, str(self.opts.height)),
        }
        began = time.perf_counter()
        try:
            response = await self.client.post(
                self.direct_url, files=fields, headers={"Authorization": f"Bearer {SIM_TOKEN}"}
            )
            if response.status_code != 200:
                pair.errors.append(f"direct: HTTP {response.status_code}: {response.text[:200]}")
                return
            if self.opts.fetch_image:
                base64.b64decode(response.json()["result"]["image"], validate=True)
        except httpx.HTTPError as error:
            pair.errors.append(f"direct: {type(error).__name__}: {error}")
            return
        pair.direct_ms = (time.perf_counter() - began) * 1000


async def sequential(caller: Caller, count: int, first: int = 0) -> list[Pair]:
    """``count`` pairs, one call at a time: the gateway's, then the direct one."""
    pairs = []
    for number in range(first, first + count):
        pair = Pair(scheduled=time.perf_counter())
        await caller.gateway(pair, number)
        await caller.direct(pair, number)
        pairs.append(pair)
    return pairs


async def open_loop(caller: Caller, rate: float, duration: float, first: int) -> list[Pair]:
    """A pair every 1/rate seconds for ``duration`` seconds, each at its scheduled time
    whatever is still in flight; both calls of a pair at once."""
    count = max(1, round(rate * duration))
    start = time.perf_counter() + 0.1
    pairs = [Pair(scheduled=start + index / rate) for index in range(count)]

    async def one(pair: Pair, number: int) -> None:
        await asyncio.sleep(max(0.0, pair.scheduled - time.perf_counter()))
        await asyncio.gather(caller.gateway(pair, number), caller.direct(pair, number))

    await asyncio.gather(*(one(pair, first + index) for index, pair in enumerate(pairs)))
    return pairs


# ---------------------------------------------------------------------------------------------
# Results


def timeline(pairs: Sequence[Pair], spans: Sequence[SpanRecord]) -> dict[str, Any]:
    """Over this mode's jobs whose traces show every step: each step's distribution, and that
    of their sum without the upstream call (the traced run's own added latency, split)."""
    traces: dict[str, list[SpanRecord]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    by_job = {}
    for trace in traces.values():
        found = job_timeline(trace)
        if found is not None:
            by_job[found[0]] = found[1]
    steps = [by_job[p.job_id] for p in pairs if p.job_id in by_job]
    return {
        "jobs": len(steps),
        "steps_ms": {name: dist([step[name] for step in steps]) for name in TIMELINE_STEPS},
        "steps_but_upstream_ms": dist(
            [sum(ms for name, ms in step.items() if name != UPSTREAM_STEP) for step in steps]
        ),
    }


def summarize(pairs: Sequence[Pair], seconds: float) -> dict[str, Any]:
    done = [p for p in pairs if p.gateway_ms is not None and p.direct_ms is not None]
    gateway = [p.gateway_ms for p in done if p.gateway_ms is not None]
    direct = [p.direct_ms for p in done if p.direct_ms is not None]
    added = [g - d for g, d in zip(gateway, direct, strict=True)]

    def timing(name: str) -> list[float]:
        return [float(v) for p in done if (v := p.timings.get(name)) is not None]

    # Whatever the job's own timestamps do not cover: the submit until the job row's creation,
    # and from its completion until the waiting answer reached the client.
    outside = [
        g - sum(float(p.timings.get(n) or 0) for n in ("queue_ms", "upstream_ms", "overhead_ms"))
        for p, g in zip(done, gateway, strict=True)
    ]
    upstream_vs_direct = [
        upstream - d
        for p, d in zip(done, direct, strict=True)
        if (upstream := p.timings.get("upstream_ms")) is not None
    ]
    agreeing = sum(
        1
        for p in done
        if p.server_timing
        == {
            name.removesuffix("_ms"): float(value)
            for name, value in p.timings.items()
            if value is not None
        }
    )
    errors = [error for p in pairs for error in p.errors]
    return {
        "pairs": len(pairs),
        "completed": len(done),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": seconds,
        "gateway_ms": dist(gateway),
        "direct_ms": dist(direct),
        "added_ms": dist(added),
        "queue_ms": dist(timing("queue_ms")),
        "upstream_ms": dist(timing("upstream_ms")),
        "overhead_ms": dist(timing("overhead_ms")),
        "outside_timings_ms": dist(outside),
        "upstream_minus_direct_ms": dist(upstream_vs_direct),
        "server_timing_present": sum(1 for p in done if p.server_timing),
        "server_timing_agrees": agreeing,
        "send_late_ms": dist([p.late_ms for p in pairs]),
    }


def _f(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def print_table(results: dict[str, Any]) -> None:
    o = results["options"]
    cache = "on" if o["simulator_cache"] else "off"
    print(
        f"Fluxgate added latency: {MODEL} {o['width']}x{o['height']}, simulator latency"
        f" {o['latency']}s (cache {cache}), 1 API process, 1 worker (default concurrency),"
        f" Prefer: wait={WAIT_SECONDS}{', image fetched' if o['fetch_image'] else ''}"
    )
    print(f"  {describe(results['conditions'])}")
    for mode, found in results["modes"].items():
        print()
        if mode == "sequential":
            title = f"sequential: {found['pairs']} pairs, one call at a time"
        else:
            title = (
                f"open loop: {o['rate']:g} pairs/s for {o['duration']:g} s"
                f" ({found['pairs']} pairs; each job and its direct call sent together)"
            )
        print(f"  {title}")
        print(f"    {'ms':<52}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
        rows = [
            ("gateway end to end (POST with Prefer: wait)", "gateway_ms"),
            ("direct call to the simulator", "direct_ms"),
            ("ADDED by Fluxgate (gateway - direct, pair by pair)", "added_ms"),
            ("  timings.queue_ms", "queue_ms"),
            ("  timings.upstream_ms", "upstream_ms"),
            ("  timings.overhead_ms", "overhead_ms"),
            (
                "  the rest: the submit, answering the wait"
                + (", the image" if o["fetch_image"] else ""),
                "outside_timings_ms",
            ),
            ("  upstream_ms - direct (pair by pair)", "upstream_minus_direct_ms"),
            ("  client: sent late by", "send_late_ms"),
        ]
        for label, name in rows:
            d = found[name]
            print(
                f"    {label:<52}{_f(d['p50']):>8}{_f(d['p95']):>8}{_f(d['p99']):>8}"
                f"{_f(d['max']):>8}"
            )
        print(
            f"    completed {found['completed']} / {found['pairs']}, errors {found['errors']};"
            f" Server-Timing in {found['server_timing_present']} answers, equal to the"
            f" timings block in {found['server_timing_agrees']}"
        )
        for error in found["first_errors"]:
            print(f"    error: {error}")
        if "timeline" in found:
            print_timeline(found["timeline"])


def print_timeline(found: dict[str, Any]) -> None:
    print()
    print(
        f"    where each job's time went, from its trace ({found['jobs']} jobs; tracing on,"
        " which adds its own cost to every step)"
    )
    rows = [
        *found["steps_ms"].items(),
        ("all steps but the upstream call", found["steps_but_upstream_ms"]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    print(f"    {'ms':<{width}}{'p50':>8}{'p95':>8}")
    for label, d in rows:
        print(f"    {label:<{width}}{_f(d['p50']):>8}{_f(d['p95']):>8}")


# ---------------------------------------------------------------------------------------------
# Main


def start_stack(run: Run, opts: Options, collector: OtlpReceiver | None) -> tuple[Stack, str]:
    stack = start_gateway(
        run,
        pg_url=opts.pg_url,
        redis_url=opts.redis_url,
        latency=opts.latency,
        simulator_cache=opts.simulator_cache,
    )
    if collector is not None:
        stack.env.update(collector.exporter_env("fluxgate-bench"))
    stack.start_api(ready_path="/readyz")
    worker = stack.start_worker(None, wait=False)  # the worker's default concurrency (64)
    key = stack.create_key("bench")
    stack.wait_consuming([worker])
    return stack, key


def settled_spans(collector: OtlpReceiver, *, timeout: float = 15.0) -> list[SpanRecord]:
    """Every span, once no new one has come for a second (the processes export every 0.1 s)."""
    deadline = time.monotonic() + timeout
    spans = collector.spans()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        latest = collector.spans()
        if len(latest) == len(spans):
            break
        spans = latest
    return spans


async def measure(
    run: Run, stack: Stack, key: str, opts: Options, collector: OtlpReceiver | None
) -> dict[str, Any]:
    caller = Caller(stack, key, opts)
    results: dict[str, Any] = {}
    done: dict[str, list[Pair]] = {}
    try:
        if opts.warmup:
            run.log(f"warming up with {opts.warmup} pairs ...")
            warm = await sequential(caller, opts.warmup, first=-opts.warmup)
            errors = [error for pair in warm for error in pair.errors]
            if errors:
                raise BenchError(f"warm-up failed: {errors[:3]}")
        processes = {name: stack.process(name).pid for name in ("api", "worker", "simulator")}
        cpu_before = {name: group_cpu_seconds(pid) for name, pid in processes.items()}
        number = 0
        for mode in opts.modes:
            began = time.perf_counter()
            if mode == "sequential":
                run.log(f"sequential: {opts.sequential} pairs ...")
                pairs = await sequential(caller, opts.sequential, number)
            else:
                run.log(f"open loop: {opts.rate:g} pairs/s for {opts.duration:g} s ...")
                pairs = await open_loop(caller, opts.rate, opts.duration, number)
            number += len(pairs)
            results[mode] = summarize(pairs, time.perf_counter() - began)
            done[mode] = pairs
            dead = stack.exited()
            if dead:
                raise BenchError(f"processes exited during the run: {', '.join(dead)}")
        # Per job (the simulator: per call, each job making one beside its direct twin).
        results["cpu_ms_per_job"] = {
            name: 1000 * (group_cpu_seconds(pid) - cpu_before[name]) / number
            for name, pid in processes.items()
        }
        results["cpu_ms_per_job"]["simulator"] /= 2
        if collector is not None:
            run.log("reading the traces ...")
            spans = settled_spans(collector)
            for mode, pairs in done.items():
                results[mode]["timeline"] = timeline(pairs, spans)
    finally:
        await caller.close()
    return results


def run_bench(opts: Options) -> int:
    with bench_run("fluxgate-bench-latency-", keep_logs=opts.keep_logs, json=opts.json) as run:
        found = conditions()  # before anything of ours runs
        collector = None
        if opts.trace:
            collector = OtlpReceiver()
            run.cleanup.callback(collector.close)
        stack, key = start_stack(run, opts, collector)
        modes = asyncio.run(measure(run, stack, key, opts, collector))
        cpu = modes.pop("cpu_ms_per_job")
        sim = stack.simulator.stats()
        results: dict[str, Any] = {
            "options": {
                "modes": list(opts.modes),
                "sequential": opts.sequential,
                "rate": opts.rate,
                "duration": opts.duration,
                "latency": opts.latency,
                "width": opts.width,
                "height": opts.height,
                "warmup": opts.warmup,
                "fetch_image": opts.fetch_image,
                "simulator_cache": opts.simulator_cache,
                "trace": opts.trace,
            },
            "conditions": found,
            "modes": modes,
            "cpu_ms_per_job": cpu,
            "simulator": {key: sim.get(key) for key in ("requests", "renders", "cache_hits")},
        }
        run.ok = all(mode["errors"] == 0 for mode in modes.values())
        if opts.json:
            print(json.dumps(json_safe(results), allow_nan=False))
        else:
            print()
            print_table(results)
            s = results["simulator"]
            cached = "" if s["cache_hits"] is None else f", {s['cache_hits']} from the cache"
            print(f"\n  simulator: {s['requests']} calls, {s['renders']} pictures drawn{cached}")
            print(
                "  CPU ms per job (all modes; the simulator's per call): API {api:.1f},"
                " worker {worker:.1f}, simulator {simulator:.1f}".format(**cpu)
            )
        return 0 if run.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    return main_wrapper(lambda: run_bench(opts))


if __name__ == "__main__":
    raise SystemExit(main())

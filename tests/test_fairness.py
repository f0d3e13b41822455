"""The account-wide upstream limiter (all workers together under UPSTREAM_RPM, holding back
together after a 429) and fair share across keys, with real worker processes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from app.upstream.gate import Gate, RedisGate, wait_for_turn
from tests.harness.claims import redis_db
from tests.harness.processes import wait_until
from tests.harness.stack import Stack
from tests.helpers import FINAL, wait_for_job

RPM = 120  # one call every 0.5 s, bursts of 2


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def limited(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    gateway = Stack(log_dir, backend=request.param, latency=0.05, upstream_rpm=str(RPM))
    try:
        gateway.start_api()
        gateway.start_worker(concurrency=8)
        gateway.start_worker(concurrency=8)  # two processes share one limit
        gateway.start_beat()
        yield gateway
    finally:
        gateway.close()


def submit_all(client: httpx.Client, prompts: list[str]) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda p: client.post("/v1/jobs", json={"prompt": p, "width": 256, "height": 256}),
                prompts,
            )
        )
    assert all(r.status_code == 202 for r in responses)
    return [r.json()["id"] for r in responses]


def arrivals(stack: Stack, prompts: list[str]) -> list[float]:
    return sorted(r["received_at"] for p in prompts for r in stack.simulator.requests_for(p))


def warm_up(client: httpx.Client) -> None:
    """Run a few jobs through both workers first. A worker's first claims and calls pay one-time
    set-up (connections, compiled statements) after the limiter let them go, which bunches
    their arrivals at the simulator by a few hundred milliseconds; then let the bucket refill."""
    for job_id in submit_all(client, [f"warm-up {i} {uuid.uuid4().hex[:6]}" for i in range(6)]):
        wait_for_job(client, job_id, statuses=FINAL, timeout=60)
    time.sleep(1.5)


def test_all_workers_together_stay_under_the_rate(limited: Stack) -> None:
    prompts = [f"paced {i} {uuid.uuid4().hex[:6]}" for i in range(12)]
    with limited.client(limited.create_key("pacer")) as client:
        warm_up(client)
        for job_id in submit_all(client, prompts):
            assert wait_for_job(client, job_id, statuses=FINAL, timeout=60)["status"] == "succeeded"
    times = arrivals(limited, prompts)
    assert len(times) == 12
    # GCRA at 2 calls/s with a burst of 2: at most 4 calls in any one-second window...
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 1.0) <= 4, times
    # ...so twelve calls take (12 - 2) x 0.5 s (less the first call's own start-up, which
    # reaches the simulator a little after its turn).
    assert times[-1] - times[0] >= 10 * 0.5 - 0.5


def test_a_429_holds_every_worker_back(limited: Stack) -> None:
    overloaded = f"overloaded {uuid.uuid4().hex[:6]}"
    limited.simulator.script(overloaded, ["3040@3", "ok"])
    others = [f"after 429 {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
    with limited.client(limited.create_key("backoff")) as client:
        [first] = submit_all(client, [overloaded])
        wait_until(
            lambda: len(limited.simulator.requests_for(overloaded)) == 1, timeout=20, what="the 429"
        )
        refused_at = limited.simulator.requests_for(overloaded)[0]["received_at"]
        ids = submit_all(client, others)
        for job_id in [first, *ids]:
            assert wait_for_job(client, job_id, statuses=FINAL, timeout=60)["status"] == "succeeded"
    # Nobody called the upstream while it had asked for 3 s of quiet.
    assert min(arrivals(limited, others)) >= refused_at + 3.0 - 0.1
    assert limited.simulator.requests_for(overloaded)[1]["received_at"] >= refused_at + 3.0 - 0.1


class CountingGate:
    """A gate that counts how often it is asked for a turn."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self.asks = 0

    def acquire(self) -> float:
        with self._lock:
            self.asks += 1
        return self._gate.acquire()

    def pause(self, seconds: float) -> None:
        self._gate.pause(seconds)


def test_threads_waiting_for_the_limiter_ask_it_one_at_a_time() -> None:
    """Twelve threads of a worker want a turn at 4 calls a second (bursts of 4): four go at
    once, and each of the other eight is asked about twice, once to learn its wait and once to
    take its turn. Were all eight to sleep the same wait and ask again together, every turn
    would cost an ask from each thread still waiting (12 + 8 + 7 + ... + 1 = 48 asks)."""
    with redis_db(owner="test") as db, redis.Redis.from_url(db.url) as client:
        gate = CountingGate(RedisGate(client, rpm=240))
        with ThreadPoolExecutor(12) as pool:
            waited = sorted(pool.map(lambda _: wait_for_turn(gate), range(12)))
    assert gate.asks <= 4 + 2 * 8 + 2, gate.asks
    # The limit holds: the last of the eight had its turn two seconds of turns later.
    assert waited[-1] >= 8 * 0.25 - 0.1, waited


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def busy(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    gateway = Stack(log_dir, backend=request.param, latency=0.3)
    try:
        gateway.start_api()
        gateway.start_worker(concurrency=2)
        gateway.start_beat()
        yield gateway
    finally:
        gateway.close()


def test_a_flood_cannot_starve_another_keys_job(busy: Stack) -> None:
    with (
        busy.client(busy.create_key("flooder")) as flooder,
        busy.client(busy.create_key("lone")) as lone,
    ):
        flood = submit_all(flooder, [f"flood {i} {uuid.uuid4().hex[:6]}" for i in range(30)])
        wait_until(
            lambda: bool(flooder.get("/v1/jobs", params={"status": "running"}).json()["data"]),
            timeout=20,
            what="the flood to start",
        )
        mine = lone.post(
            "/v1/jobs", json={"prompt": "just one", "width": 256, "height": 256}
        ).json()
        done = wait_for_job(lone, mine["id"], statuses=FINAL, timeout=60)
        assert done["status"] == "succeeded"
        submitted, started = (
            datetime.fromisoformat(mine["created_at"]),
            datetime.fromisoformat(done["started_at"]),
        )
        flood_jobs = [flooder.get(f"/v1/jobs/{job_id}").json() for job_id in flood]
        jumped = [
            job
            for job in flood_jobs
            if job["started_at"] and submitted < datetime.fromisoformat(job["started_at"]) < started
        ]
        # The lone job waits only for a slot to free (the worker runs 2 at a time), not for
        # the flood to drain.
        assert len(jumped) <= 2, [j["started_at"] for j in jumped]
        behind = [
            job
            for job in flood_jobs
            if not job["started_at"] or datetime.fromisoformat(job["started_at"]) > started
        ]
        assert len(behind) >= 10  # it went ahead of most of the flood

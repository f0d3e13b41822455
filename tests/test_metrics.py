"""Prometheus metrics, scraped from the API and from a worker's metrics port after a run with
successes, a retry, a failure, refusals, a replay and a webhook, and checked count by count."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.processes import FLUXGATE, ROOT, answers, free_port, wait_until
from tests.harness.stack import Stack
from tests.receiver import Receiver

MODEL = "flux-2-klein-4b"
# 1024 x 768 on klein-4b: 4 tiles x $0.000287.
JOB_NANOS = 1_148_000


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics answer, by name and labels."""
    answer = httpx.get(url, timeout=10)
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@dataclass
class Run:
    stack: Stack
    worker_metrics: str
    receiver: Receiver
    job_ids: dict[str, str]


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def run(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    receiver = Receiver()
    stack = Stack(log_dir, backend=request.param, webhook_allowed_networks="127.0.0.1/32")
    try:
        stack.start_api()
        port = free_port()
        stack.start_worker(4, args=["--metrics-port", str(port)])
        stack.start_beat()
        key = stack.create_key("metrics")
        budget_key = stack.create_key("metrics-budget", "--budget-usd", "0.001")
        rate_key = stack.create_key("metrics-rate", "--rate-limit", "1")
        stack.simulator.script("metrics retried", ["3040", "ok"])
        stack.simulator.script("metrics failed", ["3036"])
        job_ids: dict[str, str] = {}
        wait = {"Prefer": "wait=30"}
        with stack.client(key, timeout=60) as client:
            for name, extra in [
                ("ok", {}),
                ("webhook", {"webhook_url": receiver.url("/ok/metrics")}),
                ("retried", {}),
                ("failed", {}),
            ]:
                prompt = f"metrics {name}"
                answer = client.post("/v1/jobs", json={"prompt": prompt, **extra}, headers=wait)
                assert answer.status_code == 200, answer.text
                job_ids[name] = answer.json()["id"]
            replayed = {"prompt": "metrics replayed"}
            first = client.post(
                "/v1/jobs", json=replayed, headers={**wait, "Idempotency-Key": "m1"}
            )
            again = client.post("/v1/jobs", json=replayed, headers={"Idempotency-Key": "m1"})
            assert again.headers["Idempotent-Replayed"] == "true"
            assert first.json()["id"] == again.json()["id"]
            job_ids["replayed"] = first.json()["id"]
            assert client.get("/no/such/page").status_code == 404
        with stack.client(budget_key) as client:
            assert client.post("/v1/jobs", json={"prompt": "metrics over"}).status_code == 402
        if datetime.now(UTC).second > 50:  # both submissions in one minute's window
            time.sleep(61 - datetime.now(UTC).second)
        with stack.client(rate_key) as client:
            answer = client.post("/v1/jobs", json={"prompt": "metrics rate"}, headers=wait)
            assert answer.status_code == 200
            job_ids["rate"] = answer.json()["id"]
            assert client.post("/v1/jobs", json={"prompt": "metrics rate 2"}).status_code == 429
        wait_until(
            lambda: len(receiver.to("/ok/metrics")) == 1, timeout=30, what="the webhook delivery"
        )
        yield Run(stack, f"http://127.0.0.1:{port}/metrics", receiver, job_ids)
    finally:
        stack.close()
        receiver.close()


def test_the_api_counts_requests_by_route_template(run: Run) -> None:
    api = scrape(f"{run.stack.api_url}/metrics")
    posts = {"200": 6, "402": 1, "429": 1}  # the replay answers 202
    for status, count in posts.items():
        assert (
            value(
                api, "fluxgate_http_requests_total", route="/v1/jobs", method="POST", status=status
            )
            == count
        )
    assert (
        value(api, "fluxgate_http_requests_total", route="/v1/jobs", method="POST", status="202")
        == 1
    )
    # A path no route matched is counted under one label, not its own.
    assert (
        value(api, "fluxgate_http_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    assert not any("/no/such/page" in dict(labels).get("route", "") for _, labels in api)
    histogram = value(api, "fluxgate_http_request_duration_seconds_count", route="/v1/jobs")
    assert histogram == 9


def test_the_api_counts_submissions_refusals_and_replays(run: Run) -> None:
    api = scrape(f"{run.stack.api_url}/metrics")
    # ok, webhook, retried, failed, replayed (once: the replay made no job), rate.
    assert value(api, "fluxgate_jobs_submitted_total", model=MODEL) == 6
    assert value(api, "fluxgate_submissions_refused_total", reason="budget_exceeded") == 1
    assert value(api, "fluxgate_submissions_refused_total", reason="rate_limit_per_minute") == 1
    assert value(api, "fluxgate_idempotent_replays_total") == 1


def test_the_api_reports_the_backlog(run: Run) -> None:
    api = scrape(f"{run.stack.api_url}/metrics")
    assert value(api, "fluxgate_jobs_queued") == 0
    assert value(api, "fluxgate_jobs_running") == 0
    assert value(api, "fluxgate_jobs_oldest_queued_age_seconds") == 0
    assert value(api, "fluxgate_webhook_deliveries", state="pending") == 0
    assert value(api, "fluxgate_webhook_deliveries", state="failing") == 0
    assert value(api, "fluxgate_db_statements_total") > 0


def test_the_backlog_counts_queued_jobs_and_their_age(log_dir: Path) -> None:
    """No worker: submitted jobs stay queued, and the oldest one's age grows."""
    stack = Stack(log_dir, backend="postgres")
    try:
        stack.start_api()
        key = stack.create_key("backlog")
        with stack.client(key) as client:
            for n in range(3):
                assert client.post("/v1/jobs", json={"prompt": f"waits {n}"}).status_code == 202
        stack.execute("UPDATE jobs SET created_at = created_at - interval '90 seconds'")
        # The gauges are cached for a few seconds: wait for a read after the change.
        wait_until(
            lambda: value(scrape(f"{stack.api_url}/metrics"), "fluxgate_jobs_queued") == 3,
            timeout=15,
            what="three queued jobs",
        )
        wait_until(
            lambda: (
                value(scrape(f"{stack.api_url}/metrics"), "fluxgate_jobs_oldest_queued_age_seconds")
                >= 90
            ),
            timeout=15,
            what="the oldest job's age",
        )
    finally:
        stack.close()


def test_the_worker_counts_upstream_calls_jobs_and_money(run: Run) -> None:
    worker = scrape(run.worker_metrics)
    calls = "fluxgate_upstream_calls_total"
    # ok, webhook, retried (second call), replayed, rate: five 200s.
    assert value(worker, calls, model=MODEL, outcome="200") == 5
    assert value(worker, calls, model=MODEL, outcome="3040") == 1
    assert value(worker, calls, model=MODEL, outcome="3036") == 1
    assert value(worker, "fluxgate_upstream_call_duration_seconds_count", model=MODEL) == 7
    # 3040 (capacity) and 3036 (the daily allowance) both come as HTTP 429.
    assert value(worker, "fluxgate_upstream_throttled_total") == 2
    assert value(worker, "fluxgate_upstream_calls_in_flight") == 0
    # Every slot waited its turn at the limiter (slots that found no job included).
    assert value(worker, "fluxgate_upstream_limiter_wait_seconds_count") >= 7
    assert value(worker, "fluxgate_job_retries_total", model=MODEL, outcome="3040") == 1
    finished = "fluxgate_jobs_finished_total"
    assert value(worker, finished, model=MODEL, status="succeeded") == 5
    assert value(worker, finished, model=MODEL, status="failed") == 1
    assert value(worker, "fluxgate_charged_nanousd_total", model=MODEL) == 5 * JOB_NANOS
    assert value(worker, "fluxgate_upstream_neurons_total", model=MODEL) > 0
    assert value(worker, "fluxgate_webhook_attempts_total", outcome="2xx") == 1
    assert value(worker, "fluxgate_db_statements_total") > 0


def families(url: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(httpx.get(url).text)}


def test_the_grafana_dashboard_uses_only_metrics_fluxgate_exports(run: Run) -> None:
    exported = families(f"{run.stack.api_url}/metrics") | families(run.worker_metrics)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fluxgate.json").read_text())
    named = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"fluxgate_[a-z_]+", target["expr"])
    }
    assert len(named) >= 20
    assert named <= exported, named - exported


def test_the_ledger_agrees_with_the_charged_counter(run: Run) -> None:
    (charged,) = run.stack.sql("SELECT sum(amount_nanos) FROM charges")[0]
    worker = scrape(run.worker_metrics)
    assert value(worker, "fluxgate_charged_nanousd_total", model=MODEL) == charged


def test_a_canceled_job_is_counted_by_the_api(log_dir: Path) -> None:
    stack = Stack(log_dir, backend="postgres")
    try:
        stack.start_api()
        key = stack.create_key("cancel")
        with stack.client(key) as client:
            job = client.post("/v1/jobs", json={"prompt": "never runs"}).json()
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        api = scrape(f"{stack.api_url}/metrics")
        assert value(api, "fluxgate_jobs_finished_total", model=MODEL, status="canceled") == 1
    finally:
        stack.close()


def healthz_answers_by_process(folder: Path) -> dict[int, float]:
    """From the multiprocess files: how many ``/healthz`` requests each API process counted."""
    counted: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, count, _ in MmapedDict(str(path), read_mode=True).read_all_values():
            _, sample, labels, _ = json.loads(key)
            if sample == "fluxgate_http_requests_total" and labels.get("route") == "/healthz":
                counted[pid] = counted.get(pid, 0) + count
    return counted


def test_every_api_process_is_counted(log_dir: Path, tmp_path: Path) -> None:
    """``--workers 3``: the processes share one multiprocess directory (here one the operator
    chose), so /metrics, answered by any of them, counts the requests all of them answered."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    stack = Stack(log_dir, backend="postgres")
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        stack.start("api", [*FLUXGATE, "api", "--port", str(port), "--workers", "3"], env)
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the API")
        before = value(scrape(f"{url}/metrics"), "fluxgate_http_requests_total", **healthz)
        sent = 0
        # The kernel hands each new connection to whichever process accepts first: send
        # concurrent bursts until at least two of them have answered some.
        with ThreadPoolExecutor(16) as pool:
            for _ in range(20):
                statuses = pool.map(lambda _: httpx.get(f"{url}/healthz").status_code, range(32))
                assert set(statuses) == {200}
                sent += 32
                if len(healthz_answers_by_process(folder)) >= 2:
                    break
        assert len(healthz_answers_by_process(folder)) >= 2
        for _ in range(5):  # whichever process answers the scrape
            after = value(scrape(f"{url}/metrics"), "fluxgate_http_requests_total", **healthz)
            assert after - before == sent
    finally:
        stack.close()


def test_a_dead_api_process_leaves_no_live_gauge_behind(log_dir: Path, tmp_path: Path) -> None:
    """A request waits on a job (a watcher gauge of 1 in its process); that process is killed,
    and uvicorn starts another: the scrape no longer counts the dead one's watcher."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    stack = Stack(log_dir, backend="postgres")
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        stack.start("api", [*FLUXGATE, "api", "--port", str(port), "--workers", "2"], env)
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the API")
        key = stack.create_key("watcher")
        job = httpx.post(
            f"{url}/v1/jobs",
            json={"prompt": "never runs"},
            headers={"Authorization": f"Bearer {key}"},
        ).json()

        def wait_for_job() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(
                    f"{url}/v1/jobs/{job['id']}/events",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                )

        waiter = threading.Thread(target=wait_for_job, daemon=True)
        waiter.start()
        wait_until(
            lambda: value(scrape(f"{url}/metrics"), "fluxgate_job_watchers") == 1,
            timeout=15,
            what="one watcher",
        )
        [watching] = [
            int(path.stem.split("_")[-1])
            for path in folder.glob("gauge_livesum_*.db")
            if any(
                json.loads(k)[1] == "fluxgate_job_watchers" and v == 1
                for k, v, _ in MmapedDict(str(path), read_mode=True).read_all_values()
            )
        ]
        os.kill(watching, signal.SIGKILL)
        waiter.join(timeout=30)
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the API")
        for _ in range(5):  # whichever process answers the scrape
            assert value(scrape(f"{url}/metrics"), "fluxgate_job_watchers") == 0
    finally:
        stack.close()


def test_metrics_answer_while_the_database_is_out_of_reach(log_dir: Path) -> None:
    """The backlog cannot be read: the scrape still answers with the API's own metrics."""
    stack = Stack(log_dir, backend="postgres")
    try:
        nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/fluxgate"
        _, url = stack.start_extra_api(database_url=nowhere)
        for _ in range(2):
            samples = scrape(f"{url}/metrics")
            assert ("fluxgate_jobs_queued", frozenset()) not in samples
            healthz = {"route": "/healthz", "method": "GET", "status": "200"}
            assert value(samples, "fluxgate_http_requests_total", **healthz) >= 1
        assert "could not read the backlog" in stack.process("api").log()
    finally:
        stack.close()


def test_with_a_metrics_port_the_api_serves_them_there_and_not_on_its_own(
    log_dir: Path,
) -> None:
    """``--metrics-port`` (FLUXGATE_METRICS_PORT): every API process's metrics and the backlog
    on that port (from uvicorn's supervisor), and a 404 on the port the API is published on."""
    stack = Stack(log_dir, backend="postgres")
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    try:
        port = free_port()
        _, url = stack.start_extra_api(args=["--workers", "2", "--metrics-port", str(port)])
        moved = httpx.get(f"{url}/metrics")
        assert moved.status_code == 404
        assert "FLUXGATE_METRICS_PORT" in moved.json()["error"]["message"]
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        before = value(scrape(metrics_url), "fluxgate_http_requests_total", **healthz)
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: httpx.get(f"{url}/healthz").status_code, range(40))) == {
                200
            }
        samples = scrape(metrics_url)
        assert value(samples, "fluxgate_http_requests_total", **healthz) - before == 40
        assert ("fluxgate_jobs_queued", frozenset()) in samples
    finally:
        stack.close()


def test_a_worker_metrics_port_that_is_taken_stops_the_worker(log_dir: Path) -> None:
    stack = Stack(log_dir, backend="postgres")
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            worker = stack.start_worker(1, wait=False, args=["--metrics-port", str(port)])
            wait_until(lambda: not worker.alive(), timeout=60, what="the worker to exit")
        assert worker.popen.returncode != 0
        assert f"cannot serve metrics on 127.0.0.1:{port}" in worker.log()
    finally:
        stack.close()

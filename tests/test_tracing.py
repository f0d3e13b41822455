"""Tracing (OpenTelemetry), optional and off by default.

With OTEL_EXPORTER_OTLP_ENDPOINT set, the real API, worker and beat export to an OTLP/HTTP
receiver in this process (tests/harness/otlp.py), and a job's spans are one trace from its
submit to its completion: the request, the task message and its run, the attempt, the upstream
call, the SQL, the webhook. A job started by another message (the sweeper's) stays in its own
trace, linked to the message's. The API is also called in-process with the SDK's in-memory
exporter (tests/tracing_probe.py). No span holds a prompt, a key, a secret or a query string.
Unset, nothing is set up. Both backends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.otlp import (
    UPSTREAM_STEP,
    OtlpReceiver,
    SpanRecord,
    job_timeline,
)
from tests.harness.processes import ROOT, wait_until
from tests.harness.stack import SIM_TOKEN, Stack
from tests.helpers import unique, wait_for_job
from tests.receiver import Receiver
from tests.tracing_probe import LINK_TOKEN

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
HOOK_TOKEN = "hook-query-token-that-must-not-be-recorded"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def traced(
    log_dir: Path, collector: OtlpReceiver, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A gateway whose API, worker and beat export their spans to ``collector``."""
    gateway = Stack(
        log_dir, backend=request.param, latency=0.05, webhook_allowed_networks="127.0.0.1/32"
    )
    try:
        gateway.env.update(collector.exporter_env("fluxgate-test"))
        gateway.start_api()
        gateway.start_worker()
        gateway.start_beat()
        yield gateway
    finally:
        gateway.close()


def in_trace(collector: OtlpReceiver, trace_id: str) -> list[SpanRecord]:
    return [span for span in collector.spans() if span.trace_id == trace_id]


def one(spans: list[SpanRecord], **wanted: str) -> SpanRecord:
    """The one span with these fields (``role``: its process's), else a failure listing them."""
    role = wanted.pop("role", None)
    found = [
        span
        for span in spans
        if all(getattr(span, name) == value for name, value in wanted.items())
        and (role is None or span.resource.get("fluxgate.role") == role)
    ]
    assert len(found) == 1, (wanted, role, [(s.name, s.kind, s.resource) for s in spans])
    return found[0]


def ancestors(span: SpanRecord, spans: list[SpanRecord]) -> list[str]:
    """The ids of ``span``'s parents up to its trace's root, nearest first."""
    by_id = {candidate.span_id: candidate for candidate in spans}
    found = []
    parent = span.parent_id
    while parent is not None and parent in by_id and len(found) < 100:
        found.append(parent)
        parent = by_id[parent].parent_id
    return found


def statements(spans: list[SpanRecord], start: str) -> list[SpanRecord]:
    return [
        span
        for span in spans
        if str(span.attributes.get("db.statement", "")).lstrip().upper().startswith(start)
    ]


def upstream_calls(spans: list[SpanRecord]) -> list[SpanRecord]:
    return [span for span in spans if "/ai/run/" in str(span.attributes.get("http.url", ""))]


def assert_nothing_secret(spans: list[SpanRecord], *secrets: str) -> None:
    for span in spans:
        for value in span.values():
            for secret in secrets:
                assert secret not in value, (span.name, span.attributes)


def submitted_trace(stack: Stack, job_id: str) -> tuple[str, str]:
    """The job's kept trace context: (trace id, the submitting span's id)."""
    ((traceparent,),) = stack.sql("SELECT traceparent FROM jobs WHERE id = :id", id=job_id)
    match = TRACEPARENT.match(traceparent or "")
    assert match, traceparent
    return match.group(1), match.group(2)


def test_a_job_is_one_trace_from_submit_to_completion(
    traced: Stack, collector: OtlpReceiver, hooks: Receiver
) -> None:
    key, _, secret = traced.create_key_with_secret("traced")
    prompt = unique("a lighthouse nobody may read in a trace")
    hook_url = hooks.url(f"/ok/traced?token={HOOK_TOKEN}")
    with traced.client(key) as http:
        answer = http.post(
            "/v1/jobs",
            json={"prompt": prompt, "width": 512, "height": 512, "webhook_url": hook_url},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        wait_for_job(http, job_id, statuses={"succeeded"})
    trace_id, submit_span = submitted_trace(traced, job_id)

    def delivered() -> bool:
        spans = in_trace(collector, trace_id)
        return any(s.kind == "client" and "/ok/traced" in str(s.attributes) for s in spans) and any(
            s.name == "run/fluxgate.deliver_webhook" for s in spans
        )

    wait_until(delivered, timeout=30, what="the job's spans, its webhook's included")
    spans = in_trace(collector, trace_id)

    # The request: the HTTP server span, by its route, is the span the job keeps.
    server = one(spans, kind="server", role="api")
    assert server.span_id == submit_span
    assert server.parent_id is None
    assert server.name == "POST /v1/jobs"
    assert server.resource["service.name"] == "fluxgate-test"
    # The task message, sent after the commit inside the request, and its run in the worker.
    publish = one(spans, name="apply_async/fluxgate.forward_job", kind="producer", role="api")
    assert publish.parent_id == server.span_id
    run = one(spans, name="run/fluxgate.forward_job", kind="consumer", role="worker")
    assert run.parent_id == publish.span_id
    # The attempt, in the same trace as its message: nested, nothing to link.
    attempt = one(spans, name="job attempt", role="worker")
    assert attempt.parent_id == run.span_id
    assert attempt.links == []
    assert attempt.attributes["fluxgate.job.id"] == job_id
    assert attempt.attributes["fluxgate.job.attempt"] == 1
    assert attempt.attributes["fluxgate.upstream.model"] == "@cf/black-forest-labs/flux-2-klein-4b"
    assert attempt.attributes["fluxgate.job.outcome"] == "succeeded"
    # The upstream call, inside the attempt.
    upstream = one(upstream_calls(spans), kind="client", role="worker")
    assert upstream.parent_id == attempt.span_id
    assert upstream.attributes["http.status_code"] == 200
    # SQL on both sides: the job stored in the request, its charge written in the attempt.
    (stored,) = statements(spans, "INSERT INTO JOBS")
    assert server.span_id in ancestors(stored, spans)
    (charged,) = statements(spans, "INSERT INTO CHARGES")
    assert attempt.span_id in ancestors(charged, spans)
    assert stored.attributes["db.system"] == charged.attributes["db.system"]
    # Completion: the webhook the job's end sent, delivered in the same trace.
    hook_run = one(spans, name="run/fluxgate.deliver_webhook", role="worker")
    assert attempt.span_id in ancestors(hook_run, spans)
    hook_call = one([s for s in spans if "/ok/traced" in str(s.attributes)], kind="client")
    assert hook_run.span_id in ancestors(hook_call, spans)
    assert hook_call.attributes["http.url"].endswith("/ok/traced")  # without its query
    assert {span.resource["fluxgate.role"] for span in spans} == {"api", "worker"}

    everything = collector.spans()
    assert_nothing_secret(everything, prompt, key, secret, SIM_TOKEN, HOOK_TOKEN)


def test_a_waited_jobs_trace_splits_into_the_latency_benchs_steps(
    traced: Stack, collector: OtlpReceiver
) -> None:
    """``bench/added_latency.py --trace`` splits each job's time into steps by its spans
    (tests/harness/otlp.py: job_timeline). On a real waited job every step is found, and the
    events that bound them come in order."""
    key = traced.create_key("timeline")
    with traced.client(key) as http:
        answer = http.post(
            "/v1/jobs",
            json={"prompt": unique("a timeline"), "width": 512, "height": 512},
            headers={"Prefer": "wait=30"},
        )
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["id"]
    trace_id, _ = submitted_trace(traced, job_id)
    wait_until(
        lambda: job_timeline(in_trace(collector, trace_id)) is not None,
        timeout=30,
        what="every span of the waited job's steps",
    )
    found = job_timeline(in_trace(collector, trace_id))
    assert found is not None
    timeline_job, steps = found
    assert timeline_job == job_id
    assert [name for name, ms in steps.items() if ms < 0] == [], steps
    assert steps[UPSTREAM_STEP] >= 50, steps  # the simulator answers after 0.05 s


def test_a_job_started_by_the_sweepers_message_stays_in_its_own_trace(
    traced: Stack, collector: OtlpReceiver
) -> None:
    """Its message lost, the job is started by the one the sweeper sends: the attempt joins the
    job's trace and links the trace the message came in."""
    for worker in [p for p in traced.processes if p.name == "worker" and p.alive()]:
        worker.stop()
    # Sweeps run in a worker too: one for them, none for jobs yet.
    traced.start_worker(2, queues="maintenance,webhooks", name="sweeps")
    key = traced.create_key("resent")
    with traced.client(key) as http:
        answer = http.post("/v1/jobs", json={"prompt": unique("resent"), "width": 512})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        traced.flush_broker()
        ((sent_at,),) = traced.sql("SELECT enqueued_at FROM jobs WHERE id = :id", id=job_id)
        wait_until(
            lambda: (
                traced.sql("SELECT enqueued_at FROM jobs WHERE id = :id", id=job_id) != [(sent_at,)]
            ),
            timeout=30,
            what="the sweeper to send the job again",
        )
        traced.start_worker(queues="jobs", name="jobs")
        wait_for_job(http, job_id, statuses={"succeeded"})
    trace_id, submit_span = submitted_trace(traced, job_id)

    def attempted() -> bool:
        return any(s.name == "job attempt" for s in in_trace(collector, trace_id))

    wait_until(attempted, timeout=30, what="the attempt's span")
    spans = in_trace(collector, trace_id)
    one(spans, kind="server", span_id=submit_span)
    attempt = one(spans, name="job attempt", role="worker")
    assert attempt.attributes["fluxgate.job.id"] == job_id
    # Parented on the submit, the job's own trace, since the message was not the job's.
    assert attempt.parent_id == submit_span
    ((linked_trace, linked_span),) = attempt.links
    assert linked_trace != trace_id
    wait_until(
        lambda: any(s.span_id == linked_span for s in collector.spans()),
        timeout=30,
        what="the linked span",
    )
    message_trace = in_trace(collector, linked_trace)
    run = one(message_trace, span_id=linked_span)
    assert (run.name, run.kind) == ("run/fluxgate.forward_job", "consumer")
    # That message was the sweeper's: its trace is a sweep's.
    assert any(s.name == "run/fluxgate.sweep" for s in message_trace)
    # The upstream call and the charge are in the job's trace, under the attempt.
    upstream = one(upstream_calls(spans), kind="client", role="worker")
    assert upstream.parent_id == attempt.span_id
    (charged,) = statements(spans, "INSERT INTO CHARGES")
    assert attempt.span_id in ancestors(charged, spans)


def _probe(stack: Stack, *args: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.tracing_probe", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_in_process_the_in_memory_exporter_sees_the_request_its_sql_and_its_message(
    traced: Stack,
) -> None:
    key = traced.create_key("probe")
    admin = traced.create_key("probe-admin", "--admin")
    prompt = unique("a prompt for the in-memory exporter")
    seen = _probe(traced, "on", key, admin, prompt, env=traced.env)
    spans = [SpanRecord.from_json(span) for span in seen["spans"]]  # type: ignore[attr-defined]
    job_id = str(seen["job_id"])
    trace_id, submit_span = submitted_trace(traced, job_id)

    submit = one(spans, kind="server", name="POST /v1/jobs")
    assert (submit.trace_id, submit.span_id) == (trace_id, submit_span)
    assert submit.attributes["http.target"] == "/v1/jobs"
    assert submit.attributes["http.status_code"] == 202
    (stored,) = statements(spans, "INSERT INTO JOBS")
    assert submit.span_id in ancestors(stored, spans)
    # Values are bound, never written into the statement.
    assert prompt not in stored.attributes["db.statement"]
    publish = one(spans, kind="producer", name="apply_async/fluxgate.forward_job")
    assert publish.parent_id == submit.span_id

    # Requests are recorded by their route: no query (search text), no path token.
    search = one(spans, kind="server", name="GET /v1/admin/jobs")
    assert search.attributes["http.target"] == "/v1/admin/jobs"
    assert search.attributes["http.url"] == "http://gateway.test/v1/admin/jobs"
    shared = one(spans, kind="server", name="GET /v1/images/shared/{token}")
    assert shared.attributes["http.target"] == "/v1/images/shared/{token}"
    assert shared.attributes["http.status_code"] == 404
    # Probes are not traced; requests are one span each (no send/receive spans).
    assert not [s for s in spans if "healthz" in s.name or "http send" in s.name]
    assert {s.kind for s in spans} == {"server", "client", "producer"}  # client: SQL
    assert "OpenTelemetryMiddleware" in seen["middleware"]  # type: ignore[operator]
    assert_nothing_secret(spans, prompt, key, admin, LINK_TOKEN, SIM_TOKEN)


def test_with_the_variable_unset_nothing_is_set_up(traced: Stack) -> None:
    # The SDK would export here if anything set it up with its defaults.
    bait = OtlpReceiver()
    try:
        env = {
            **{k: v for k, v in traced.env.items() if not k.startswith("OTEL_")},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{bait.url}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        seen = _probe(traced, "off", traced.create_key("untraced"), env=env)
    finally:
        bait.close()
    assert seen["modules"] == []
    assert seen["tracer_provider"] == "ProxyTracerProvider"
    assert "OpenTelemetryMiddleware" not in seen["middleware"]  # type: ignore[operator]
    assert seen["httpx_wrapped"] is False
    assert bait.requests == 0
    rows = traced.sql("SELECT traceparent FROM jobs WHERE id = :id", id=str(seen["job_id"]))
    assert rows == [(None,)]


@pytest.mark.parametrize("command", [["api", "--port", "1"], ["worker"], ["beat"]])
def test_tracing_asked_for_but_not_installed_stops_start_up_with_one_line(
    traced: Stack, command: list[str]
) -> None:
    # As if the extra were not installed: its instrumentations cannot be imported.
    script = (
        "import sys; sys.modules['opentelemetry.instrumentation'] = None; "
        f"from app.cli import main; sys.exit(main({command!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=traced.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fluxgate: OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is not")
    assert "pip install 'fluxgate[otel]'" in lines[0]


def test_a_wrong_endpoint_stops_start_up_with_one_line_naming_it(traced: Stack) -> None:
    env = {**traced.env, "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "fluxgate: invalid configuration: OTEL_EXPORTER_OTLP_ENDPOINT: must be an http(s) URL,"
        " e.g. http://collector:4318"
    )

"""A trace collector for the tests: an OTLP/HTTP receiver on 127.0.0.1 that the gateway's
processes export to, keeping every span it is sent; and the one shape spans are checked in,
whether they came over OTLP or from the SDK's in-memory exporter (tests/tracing_probe.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.harness.processes import free_port

# OTLP's span kinds, by their number in the protocol.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class SpanRecord:
    """A finished span: ids in hex, its attributes, its links (trace id, span id), and its
    process's resource attributes."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    # When it started and ended, in nanoseconds since the epoch (the process's clock).
    start_ns: int = 0
    end_ns: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpanRecord:
        return cls(
            trace_id=data["trace_id"],
            span_id=data["span_id"],
            parent_id=data["parent_id"],
            name=data["name"],
            kind=data["kind"],
            attributes=data["attributes"],
            resource=data["resource"],
            links=[(trace_id, span_id) for trace_id, span_id in data["links"]],
        )

    def values(self) -> Iterator[str]:
        """Every attribute value, its resource's too, as text."""
        for value in (*self.attributes.values(), *self.resource.values()):
            yield from (str(item) for item in value) if isinstance(value, list) else [str(value)]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def decode(body: bytes) -> list[SpanRecord]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1 for ``POST /v1/traces`` (protobuf); ``url`` is the base URL to give
    as ``OTEL_EXPORTER_OTLP_ENDPOINT``. ``requests`` counts every request, whatever it held."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self.paths: list[str] = []
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                spans = decode(body) if self.path == "/v1/traces" else []
                with receiver._lock:
                    receiver.requests += 1
                    receiver.paths.append(self.path)
                    receiver._spans.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def exporter_env(self, service_name: str) -> dict[str, str]:
        """The variables that make a gateway process export its spans here, as ``service_name``."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_SERVICE_NAME": service_name,
            # The SDK's own setting: export every 0.1 s rather than every 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# The steps of one waited submission (``POST /v1/jobs`` with ``Prefer: wait``), in order, as
# its trace shows them: the API's request span, its statements and its message; the worker's
# task, its job attempt and the upstream call inside it, and the finish's statements. The
# upstream call's span ends when the answer's headers arrive: reading and decoding its body
# belong to the step after it.
UPSTREAM_STEP = "upstream call, to its answer's headers"
TIMELINE_STEPS = (
    "API: request to its first statement (middleware, authentication, body, validation)",
    "API: the submit's statements (checkout, key read again, INSERT, position)",
    "API: commit, up to the message's publish",
    "the message: publish, broker, Celery, to the worker's task",
    "worker: limiter and claim (statements, commit, notification)",
    "worker: claim to the upstream call",
    UPSTREAM_STEP,
    "worker: the answer's body and image, then the finish's statements",
    "commit, notification, and the API's answer sent",
)
# The server span's status code, by the old and the stable semantic conventions.
_STATUS_CODES = ("http.status_code", "http.response.status_code")


def _statement(span: SpanRecord) -> bool:
    return "db.statement" in span.attributes


def job_timeline(trace: list[SpanRecord]) -> tuple[str, dict[str, float]] | None:
    """Where one waited submission's time went, in ms per step of :data:`TIMELINE_STEPS`,
    from the spans of its trace (the API's and the worker's clocks are the same machine's);
    with the id of the job its attempt ran. ``None`` when the chain is not there: a submission
    answered before its job ended (not 200), a job with more than one attempt, or a job
    another job's message ran (a message is a dispatch slot, app/jobs/execution.py), whose
    attempt then links to that message's trace."""

    def only(found: list[SpanRecord]) -> SpanRecord | None:
        return found[0] if len(found) == 1 else None

    def role(span: SpanRecord) -> Any:
        return span.resource.get("fluxgate.role")

    request = only([s for s in trace if s.kind == "server" and s.name == "POST /v1/jobs"])
    published = only([s for s in trace if s.kind == "producer" and role(s) == "api"])
    attempt = only([s for s in trace if s.name == "job attempt"])
    # The task the attempt ran in, only if its message was this submission's own.
    task = only(
        [s for s in trace if s.kind == "consumer" and attempt and s.span_id == attempt.parent_id]
    )
    upstream = only(
        [s for s in trace if s.kind == "client" and "/ai/run/" in str(s.attributes.get("http.url"))]
    )
    if (
        request is None
        or published is None
        or task is None
        or attempt is None
        or upstream is None
        or 200 not in (request.attributes.get(name) for name in _STATUS_CODES)
    ):
        return None
    # The submit's statements, and the pool's checkout ("connect") that opens its transaction.
    submit = [
        s
        for s in trace
        if role(s) == "api"
        and (_statement(s) or s.name == "connect")
        and request.start_ns <= s.start_ns
        and s.end_ns <= published.start_ns
    ]
    # The finish's statements: after the upstream call, inside the attempt (on the embedded
    # backend the worker's own statements around it, such as the limiter's, share the trace).
    finish = [
        s
        for s in trace
        if role(s) == "worker"
        and _statement(s)
        and upstream.end_ns < s.start_ns
        and s.end_ns <= attempt.end_ns
    ]
    if not submit or not finish:
        return None
    # Every boundary is an event bound to come after the one before it, whatever the load. So
    # the API's answer, which the notification the finish's commit sends may bring before the
    # attempt's span has ended, is measured from the finish's last statement.
    times = (
        request.start_ns,
        min(s.start_ns for s in submit),
        max(s.end_ns for s in submit),
        # Its start: the worker may have the message before the API's publish span has ended.
        published.start_ns,
        task.start_ns,
        attempt.start_ns,
        upstream.start_ns,
        upstream.end_ns,
        max(s.end_ns for s in finish),
        request.end_ns,
    )
    steps = {
        name: (end - start) / 1e6
        for name, (start, end) in zip(TIMELINE_STEPS, pairwise(times), strict=True)
    }
    return str(attempt.attributes["fluxgate.job.id"]), steps

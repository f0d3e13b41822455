"""Tracing with OpenTelemetry: optional (the ``otel`` extra) and off unless
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Each edge calls :func:`setup` once at its process's start (the API in ``create_app``, a worker
and beat in their commands). Then HTTP requests (FastAPI), task messages sent and run (Celery;
the trace context travels in the message headers), outgoing calls (httpx: the upstream and
webhooks) and SQL statements (SQLAlchemy) are spans, exported over OTLP/HTTP. Off, this module
imports nothing of OpenTelemetry and every function here does nothing.

One trace per job: a task message is a dispatch slot, so the worker may run another job than
the one whose message it took (app/jobs/execution.py:claim_next), and retries and the sweeper
send messages too. So a job keeps the trace its submit started (``jobs.traceparent``), and each
attempt's span (:func:`job_span`) continues that trace, linked to the message's trace when that
is another one.

What spans hold: requests to the API by their route's template (``/v1/jobs/{job_id}``, never
the path or query sent: a query can hold search text, a shared image's path is its token);
outgoing URLs without their query; SQL with its placeholders, never the values. Nothing here
records a prompt, a key or a secret, and the instrumentations record no headers unless their
own OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* variables ask.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from app.core.settings import ConfigError, Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

# What the ``otel`` extra brings, by module.
REQUIRED_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.fastapi",
    "opentelemetry.instrumentation.celery",
    "opentelemetry.instrumentation.sqlalchemy",
    "opentelemetry.instrumentation.httpx",
)
# Probes and scrapes, every few seconds: not worth a trace each.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics")
JOB_ATTEMPT_SPAN = "job attempt"


@dataclass(frozen=True)
class _Tracing:
    provider: TracerProvider
    tracer: Tracer


_tracing: _Tracing | None = None


def _missing_modules() -> list[str]:
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def check_installed(settings: Settings) -> None:
    """Raise :class:`ConfigError` (one line) if tracing is asked for but not installed."""
    if settings.otel_exporter_otlp_endpoint is None:
        return
    missing = _missing_modules()
    if missing:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is not installed "
            f"(no {', '.join(missing)}): pip install 'fluxgate[otel]', or unset it"
        )


def setup(settings: Settings, *, role: str, exporter: SpanExporter | None = None) -> bool:
    """Start tracing in this process if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (again: nothing
    more); whether it is on. ``role``: api, worker or beat, a resource attribute of every span.
    ``exporter``: where spans go instead of the endpoint, each as it ends (tests)."""
    global _tracing
    endpoint = settings.otel_exporter_otlp_endpoint
    if endpoint is None:
        return False
    if _tracing is not None:
        return True
    check_installed(settings)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from app.core.db import get_engine

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.otel_service_name, "fluxgate.role": role}
        )
    )
    if exporter is None:
        # The variable is the collector's base URL; traces go to its /v1/traces (the spec's
        # rule for OTLP/HTTP). The SDK's other OTEL_* variables (headers, batching, sampler)
        # apply as usual.
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Handed to each instrumentation, not made the global provider: only what is set up here
    # makes spans.
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument(
        tracer_provider=provider,
        request_hook=_outgoing_request,
        async_request_hook=_async_outgoing_request,
    )
    # The process's one engine, and any made later. The instrumentation declares SQLAlchemy
    # < 2.1; it works with 2.1's unchanged cursor events (tests/test_tracing.py checks the spans).
    SQLAlchemyInstrumentor().instrument(
        tracer_provider=provider, engine=get_engine(), skip_dep_check=True
    )
    _tracing = _Tracing(provider=provider, tracer=provider.get_tracer("fluxgate"))
    return True


def instrument_app(app: FastAPI) -> None:
    """A span for every request to ``app`` (besides probes and scrapes), if tracing is on."""
    if _tracing is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_tracing.provider,
        server_request_hook=_record_route_only,
        excluded_urls=",".join(f"{path}$" for path in UNTRACED_PATHS),
        # One span per request, not one per chunk sent or read (an event stream sends many).
        exclude_spans=["receive", "send"],
    )


def current_traceparent() -> str | None:
    """The current span as a W3C ``traceparent``, to keep with a job; ``None`` when tracing is
    off (or no span is current)."""
    if _tracing is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and len(value) <= 64 else None


Note = Callable[[str, str | int], None]


def _ignore(_key: str, _value: str | int) -> None:
    return None


@contextmanager
def job_span(
    name: str, *, traceparent: str | None, attributes: Mapping[str, str | int]
) -> Iterator[Note]:
    """A span around work for one job, in the job's own trace (``traceparent``: where its
    submit started it). If the work runs in another trace (a message sent for another job, or
    by the sweeper), the span is linked to it. Yields a function that adds an attribute."""
    if _tracing is None:
        yield _ignore
        return
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    here = trace.get_current_span().get_span_context()
    parent: Context | None = None  # the current context
    links: list[trace.Link] = []
    if traceparent:
        kept = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        job_trace = trace.get_current_span(kept).get_span_context()
        if job_trace.is_valid and job_trace.trace_id != here.trace_id:
            parent = kept
            if here.is_valid:
                links.append(trace.Link(here))
    with _tracing.tracer.start_as_current_span(
        name, context=parent, links=links, attributes=dict(attributes)
    ) as span:
        yield span.set_attribute


def _attributes(span: Span) -> Mapping[str, Any]:
    # An SDK span shows its attributes; a span that is not recorded has none.
    return getattr(span, "attributes", None) or {}


def _record_route_only(span: Span, _scope: Mapping[str, Any]) -> None:
    """Record a request by its route's template (which the instrumentation found for the
    span's name): the path and query sent may hold what a span must not (search text, a
    shared image's token)."""
    attributes = _attributes(span)
    template = str(attributes.get("http.route") or "(no route)")
    for key in ("http.target", "url.path"):
        if key in attributes:
            span.set_attribute(key, template)
    for key in ("http.url", "url.full"):
        value = attributes.get(key)
        if isinstance(value, str):
            scheme, netloc, *_ = urlsplit(value)
            span.set_attribute(key, urlunsplit((scheme, netloc, template, "", "")))
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


def _outgoing_request(span: Span, _request: object) -> None:
    """An outgoing URL without its query (a webhook receiver's URL may carry a token)."""
    attributes = _attributes(span)
    for key in ("http.url", "url.full"):
        value = attributes.get(key)
        if isinstance(value, str) and ("?" in value or "#" in value):
            span.set_attribute(key, urlunsplit(urlsplit(value)._replace(query="", fragment="")))
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


async def _async_outgoing_request(span: Span, request: object) -> None:
    _outgoing_request(span, request)

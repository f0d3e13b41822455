"""The API application in this process, called in-process (ASGI), to see what tracing sets up.

``python -m tests.tracing_probe on KEY ADMIN_KEY PROMPT``: tracing set up with the SDK's
in-memory exporter, then a submit, an admin search for the prompt, a shared-image link and a
health probe; prints the finished spans and the job's id as JSON.

``python -m tests.tracing_probe off KEY``: the application built as the environment says
(tracing off), then a submit; prints what OpenTelemetry modules are loaded, the global tracer
provider, the application's middleware and whether httpx is wrapped.

Run in a process of its own (tests/test_tracing.py), since tracing is set up once per process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from app.core import tracing
from app.core.settings import get_settings

LINK_TOKEN = "shared-link-token-that-must-not-be-recorded"


def _record(span: Any) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": None if span.parent is None else format(span.parent.span_id, "016x"),
        "name": span.name,
        "kind": span.kind.name.lower(),
        "attributes": {key: _plain(value) for key, value in (span.attributes or {}).items()},
        "resource": {key: _plain(value) for key, value in span.resource.attributes.items()},
        "links": [
            [format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")]
            for link in span.links
        ],
    }


def _middleware(app: Any) -> list[str]:
    """The classes a request passes through, outermost first (the stack is built by now)."""
    names = []
    layer = app.middleware_stack
    while layer is not None and len(names) < 50:
        names.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    return names


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


async def _calls(key: str, admin_key: str | None, prompt: str) -> dict[str, Any]:
    from app.main import create_app

    app = create_app()
    seen: dict[str, Any] = {"app": app}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        submitted = await http.post(
            "/v1/jobs",
            json={"prompt": prompt, "width": 512, "height": 512},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert submitted.status_code == 202, submitted.text
        seen["job_id"] = submitted.json()["id"]
        if admin_key is not None:
            found = await http.get(
                "/v1/admin/jobs",
                params={"q": prompt},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            assert found.status_code == 200, found.text
            shared = await http.get(f"/v1/images/shared/{LINK_TOKEN}", params={"format": "png"})
            assert shared.status_code == 404, shared.text
            health = await http.get("/healthz")
            assert health.status_code == 200, health.text
    return seen


def on(key: str, admin_key: str, prompt: str) -> dict[str, Any]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.setup(get_settings(), role="api", exporter=exporter)
    seen = asyncio.run(_calls(key, admin_key, prompt))
    return {
        "job_id": seen["job_id"],
        "spans": [_record(span) for span in exporter.get_finished_spans()],
        "middleware": _middleware(seen["app"]),
    }


def off(key: str) -> dict[str, Any]:
    seen = asyncio.run(_calls(key, None, "a probe with tracing off"))
    from opentelemetry import trace

    return {
        "job_id": seen["job_id"],
        "modules": sorted(
            name
            for name in sys.modules
            if name.startswith(
                (
                    "opentelemetry.instrumentation",
                    "opentelemetry.sdk.trace",
                    "opentelemetry.exporter",
                )
            )
        ),
        "tracer_provider": type(trace.get_tracer_provider()).__name__,
        "middleware": _middleware(seen["app"]),
        "httpx_wrapped": hasattr(httpx.HTTPTransport.handle_request, "__wrapped__"),
    }


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    result = on(*args) if mode == "on" else off(*args)
    print(json.dumps(result))

"""A local stand-in for FLUX.2 on Cloudflare Workers AI, faithful to docs/workers-ai.md.

Used in development, tests and benchmarks; adds fault injection and /__sim inspection endpoints.
"""

from __future__ import annotations

import uvicorn

from app.simulator.server import SimulatorConfig, create_app

__all__ = ["SimulatorConfig", "create_app", "serve"]


def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Run the simulator with uvicorn until interrupted (blocking). A stop waits at most a
    second for calls in flight: a hanging call (the hang fault) must not keep it alive."""
    from app.http.serve import serve as serve_asgi

    serve_asgi(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )

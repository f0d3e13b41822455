from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.stack import Stack, running_gateway


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session", params=["postgres", "embedded"])
def stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The shared gateway (API, a worker and beat against the simulator), once on PostgreSQL
    + Redis and once on the embedded default (SQLite + the filesystem broker)."""
    with running_gateway(log_dir, backend=request.param, latency=0.05, worker=True) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def api_key(stack: Stack) -> str:
    return stack.create_key("main")


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    with stack.client(api_key) as http:
        yield http

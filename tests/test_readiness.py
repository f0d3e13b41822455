"""/readyz tells the truth about the schema: a database behind this version's migrations (or
never migrated) is not ready, with the revisions and the command in the answer; after
``fluxgate migrate`` it is. On both backends, against real API processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command

from app.core.migrate import alembic_config, expected_schema
from app.core.settings import normalize_database_url
from tests.harness.claims import postgres_database
from tests.harness.stack import Stack
from tests.helpers import assert_error


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack = Stack(log_dir, backend=request.param)
    try:
        yield stack
    finally:
        stack.close()


def test_a_database_behind_the_migrations_is_not_ready_until_migrated(stack: Stack) -> None:
    head = expected_schema().head
    stack.start_api()
    ready = httpx.get(f"{stack.api_url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "database": "ok",
        "migrations": "ok",
        "broker": "ok",
    }

    # A deploy of this version on a database a step behind.
    command.downgrade(alembic_config(normalize_database_url(stack.database_url)), "0010")
    behind = httpx.get(f"{stack.api_url}/readyz")
    error = assert_error(behind, 503, "migrations_pending", None)
    assert "revision 0010" in error["message"]
    assert f"needs {head}" in error["message"]
    assert "fluxgate migrate" in error["message"]

    stack.cli("migrate")
    assert httpx.get(f"{stack.api_url}/readyz").status_code == 200

    # Older code on a database a newer version migrated (a rolling deploy, migrated first):
    # still ready, since migrations only add; the answer and the log say so.
    stack.execute("UPDATE alembic_version SET version_num = '0999'")
    try:
        ahead = httpx.get(f"{stack.api_url}/readyz")
        assert ahead.status_code == 200
        assert ahead.json()["migrations"] == f"ahead: revision 0999 (this version's is {head})"
        assert "newer than this version's" in stack.process("api").log()
    finally:
        stack.execute("UPDATE alembic_version SET version_num = :head", head=head)
    assert httpx.get(f"{stack.api_url}/readyz").status_code == 200


def test_a_database_never_migrated_is_not_ready(stack: Stack, tmp_path: Path) -> None:
    def check(url: str) -> None:
        _, api = stack.start_extra_api(database_url=url)
        error = assert_error(httpx.get(f"{api}/readyz"), 503, "migrations_pending", None)
        assert "never been migrated" in error["message"]
        assert "fluxgate migrate" in error["message"]

    if stack.backend == "embedded":
        check(f"sqlite:///{tmp_path / 'empty.db'}")
    else:
        with postgres_database() as url:
            check(url)

"""The last active admin key cannot be revoked, even by two admins revoking each other at
once: nobody could manage keys any more."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.stack import Stack, running_gateway
from tests.helpers import assert_error


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def lone_admin_stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway of its own: these tests need to know every admin key there is."""
    with running_gateway(log_dir, backend=request.param, latency=0.05, worker=False) as gateway:
        yield gateway


def test_the_last_active_admin_key_cannot_be_revoked(lone_admin_stack: Stack) -> None:
    stack = lone_admin_stack
    first_key, first_id, _ = stack.create_key_with_secret("first admin", "--admin")
    with stack.client(first_key) as first:
        assert_error(first.delete(f"/v1/admin/keys/{first_id}"), 409, "last_admin_key", None)
        result = stack.cli("keys", "revoke", first_id, check=False)
        assert result.returncode == 1
        assert "last active admin key" in result.stderr
        assert first.get("/v1/admin/keys").status_code == 200  # still works

        second = first.post("/v1/admin/keys", json={"name": "second", "admin": True}).json()
        # With another admin, an admin key may go, even itself.
        assert first.delete(f"/v1/admin/keys/{first_id}").status_code == 200
    with stack.client(second["key"]) as remaining:
        assert_error(
            remaining.delete(f"/v1/admin/keys/{second['id']}"), 409, "last_admin_key", None
        )
        # Normal keys are not affected by the rule.
        normal = remaining.post("/v1/admin/keys", json={"name": "normal"}).json()
        assert remaining.delete(f"/v1/admin/keys/{normal['id']}").status_code == 200


def test_two_admins_revoking_each_other_at_once_leave_one(lone_admin_stack: Stack) -> None:
    stack = lone_admin_stack
    for _ in range(5):
        keys = [stack.create_key_with_secret(f"admin {n}", "--admin") for n in range(2)]
        # Only these two are active admin keys now.
        live = stack.sql("SELECT id FROM api_keys WHERE is_admin AND revoked_at IS NULL")
        for key_id in {row[0] for row in live} - {keys[0][1], keys[1][1]}:
            stack.execute(
                "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = :id", id=key_id
            )
        clients = [stack.client(key) for key, _, _ in keys]
        with ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(
                    lambda pair: pair[0].delete(f"/v1/admin/keys/{pair[1]}"),
                    [(clients[0], keys[1][1]), (clients[1], keys[0][1])],
                )
            )
        for client in clients:
            client.close()
        assert sorted(reply.status_code for reply in replies) in ([200, 401], [200, 409]), [
            reply.text for reply in replies
        ]
        active = stack.sql("SELECT count(*) FROM api_keys WHERE is_admin AND revoked_at IS NULL")
        assert int(active[0][0]) == 1

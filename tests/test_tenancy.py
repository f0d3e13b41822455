"""Keys and scopes, tenant isolation on every route, and exact budgets under concurrency."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from app.billing.budgets import TOTAL_PERIOD_START, period_start
from app.keys.models import ApiKey
from tests.harness.stack import Stack
from tests.helpers import FINAL, assert_error, wait_for_job


@pytest.fixture(scope="module")
def admin(stack: Stack) -> httpx.Client:
    return stack.client(stack.create_key("root", "--admin"))


def test_admin_creates_lists_updates_and_revokes_keys(stack: Stack, admin: httpx.Client) -> None:
    response = admin.post("/v1/admin/keys", json={"name": "billing-service", "budget_usd": "25"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["key"].startswith("fgk_")
    assert len(created["key"]) >= 4 + 32
    assert created["webhook_secret"].startswith("whsec_")
    assert created["prefix"] == created["key"][:12]
    assert (created["budget_usd"], created["budget_period"], created["admin"]) == (
        "25",
        "month",
        False,
    )

    with stack.client(created["key"]) as service:
        assert service.get("/v1/jobs").status_code == 200
        # A normal key is no admin.
        for method, path in [
            ("GET", "/v1/admin/keys"),
            ("POST", "/v1/admin/keys"),
            ("GET", f"/v1/admin/keys/{created['id']}"),
            ("PATCH", f"/v1/admin/keys/{created['id']}"),
            ("DELETE", f"/v1/admin/keys/{created['id']}"),
        ]:
            assert_error(service.request(method, path, json={}), 403, "admin_required", None)

        listed = admin.get("/v1/admin/keys").json()
        [row] = [key for key in listed["data"] if key["id"] == created["id"]]
        assert "key" not in row
        assert "webhook_secret" not in row
        assert created["key"] not in json.dumps(listed)

        patched = admin.patch(
            f"/v1/admin/keys/{created['id']}", json={"name": "billing", "budget_usd": None}
        )
        assert patched.status_code == 200
        assert (patched.json()["name"], patched.json()["budget_usd"]) == ("billing", None)
        assert_error(
            admin.patch(f"/v1/admin/keys/{created['id']}", json={"budget_usd": "-1"}),
            422,
            "invalid_parameter",
            "budget_usd",
        )
        assert_error(
            admin.patch(f"/v1/admin/keys/{created['id']}", json={"budget_usd": "0.0000000001"}),
            422,
            "invalid_parameter",
            "budget_usd",
        )

        revoked = admin.delete(f"/v1/admin/keys/{created['id']}")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        # Refused from its very next request.
        assert_error(service.get("/v1/jobs"), 401, "invalid_api_key", None)
    assert_error(admin.get("/v1/admin/keys/key_nope"), 404, "key_not_found", "id")


def test_cli_manages_keys(stack: Stack) -> None:
    made = json.loads(
        stack.cli(
            "keys",
            "create",
            "--name",
            "cli",
            "--budget-usd",
            "0.5",
            "--budget-period",
            "total",
            "--json",
        ).stdout
    )
    listed = json.loads(stack.cli("keys", "list", "--json").stdout)
    [row] = [key for key in listed if key["id"] == made["id"]]
    assert (row["budget_usd"], row["budget_period"], row["revoked"]) == ("0.5", "total", False)
    stack.cli(
        "keys",
        "update",
        made["id"],
        "--budget-usd",
        "none",
        "--rate-limit",
        "5",
        "--max-concurrent",
        "2",
        "--name",
        "cli2",
    )
    [row] = [
        key
        for key in json.loads(stack.cli("keys", "list", "--json").stdout)
        if key["id"] == made["id"]
    ]
    assert (row["name"], row["budget_usd"]) == ("cli2", None)
    assert stack.cli("keys", "update", made["id"], "--rate-limit", "0", check=False).returncode == 2
    assert stack.cli("keys", "update", "key_nope", "--name", "x", check=False).returncode == 1
    assert stack.cli("keys", "revoke", made["id"]).returncode == 0
    assert next(
        k for k in json.loads(stack.cli("keys", "list", "--json").stdout) if k["id"] == made["id"]
    )["revoked"]
    bad = stack.cli("keys", "create", "--name", "x", "--budget-usd", "lots", check=False)
    assert bad.returncode == 2
    assert "--budget-usd" in bad.stderr


def test_every_route_hides_other_tenants_jobs(stack: Stack, client: httpx.Client) -> None:
    job = client.post(
        "/v1/jobs", json={"prompt": f"private {uuid.uuid4().hex[:6]}", "width": 256, "height": 256}
    ).json()
    wait_for_job(client, job["id"], statuses=FINAL)
    with stack.client(stack.create_key("foreign")) as foreign:
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/image"),
            ("GET", f"/v1/jobs/{job['id']}/image?format=webp"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"),
            ("GET", f"/v1/jobs/{job['id']}/events"),
            ("GET", f"/v1/jobs/{job['id']}/deliveries"),
        ]:
            assert_error(foreign.request(method, path), 404, "job_not_found", "id")
        for status in (None, "succeeded"):
            params = {"limit": 100, **({"status": status} if status else {})}
            assert job["id"] not in {
                j["id"] for j in foreign.get("/v1/jobs", params=params).json()["data"]
            }


def test_budget_admits_exactly_what_fits_under_concurrency(
    stack: Stack, admin: httpx.Client
) -> None:
    created = admin.post("/v1/admin/keys", json={"name": "tight", "budget_usd": "0.01"}).json()
    body = {
        "prompt": f"budgeted {uuid.uuid4().hex[:6]}",
        "width": 1024,
        "height": 1024,
    }  # $0.001148
    with stack.client(created["key"]) as client, ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/jobs", json=body), range(20)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] * 8 + [402] * 12, statuses
        for response in responses:
            if response.status_code == 402:
                assert_error(response, 402, "budget_exceeded", None)
        for response in responses:
            if response.status_code == 202:
                assert (
                    wait_for_job(client, response.json()["id"], statuses=FINAL)["status"]
                    == "succeeded"
                )
        assert_error(client.post("/v1/jobs", json=body), 402, "budget_exceeded", None)
    key = admin.get(f"/v1/admin/keys/{created['id']}").json()
    assert key["budget_used_usd"] == "0.009184"  # 8 x 0.001148, charged
    [(spent,)] = stack.sql(
        "SELECT sum(amount_nanos) FROM charges WHERE api_key_id = :id", id=created["id"]
    )
    assert int(spent) == 8 * 1_148_000


def test_failed_job_gives_its_hold_back(stack: Stack, admin: httpx.Client) -> None:
    created = admin.post(
        "/v1/admin/keys", json={"name": "one job", "budget_usd": "0.000287"}
    ).json()
    prompt = f"fails {uuid.uuid4().hex[:6]}"
    stack.simulator.script(prompt, ["3036"])
    with stack.client(created["key"]) as client:
        job = client.post("/v1/jobs", json={"prompt": prompt, "width": 512, "height": 512}).json()
        assert_error(
            client.post("/v1/jobs", json={"prompt": "x", "width": 512, "height": 512}),
            402,
            "budget_exceeded",
            None,
        )
        assert wait_for_job(client, job["id"], statuses=FINAL)["status"] == "failed"
        again = client.post(
            "/v1/jobs", json={"prompt": f"ok {uuid.uuid4().hex[:6]}", "width": 512, "height": 512}
        )
        assert again.status_code == 202
        assert wait_for_job(client, again.json()["id"], statuses=FINAL)["status"] == "succeeded"
    assert admin.get(f"/v1/admin/keys/{created['id']}").json()["budget_used_usd"] == "0.000287"


def test_budget_periods() -> None:
    monthly = ApiKey(budget_period="month")
    assert period_start(monthly, datetime(2026, 11, 23, 21, 5, tzinfo=UTC)) == datetime(
        2026, 11, 1, tzinfo=UTC
    )
    assert (
        period_start(ApiKey(budget_period="total"), datetime(2026, 11, 23, tzinfo=UTC))
        == TOTAL_PERIOD_START
    )


def test_no_plaintext_key_in_a_database_dump(stack: Stack) -> None:
    if stack.backend != "postgres":
        pytest.skip("pg_dump is for PostgreSQL; the SQLite file is checked below")
    key = stack.create_key("dumped")
    dump = subprocess.run(
        ["pg_dump", "--data-only", stack.database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    # Only the display prefix (the first 12 characters) and a hash are stored.
    assert key[:12] in dump
    assert key not in dump
    assert key[12:] not in dump


def test_no_plaintext_key_in_the_sqlite_file(stack: Stack) -> None:
    if stack.backend != "embedded":
        pytest.skip("the PostgreSQL dump is checked above")
    key = stack.create_key("on disk")
    data = (stack.data_dir / "fluxgate.db").read_bytes() + b"".join(
        path.read_bytes() for path in stack.data_dir.glob("fluxgate.db-wal")
    )
    assert key.encode() not in data
    assert key[12:].encode() not in data


def test_submissions_per_minute_are_limited(stack: Stack, admin: httpx.Client) -> None:
    if datetime.now(UTC).second > 50:  # keep the four submissions in one minute window
        time.sleep(61 - datetime.now(UTC).second)
    created = admin.post(
        "/v1/admin/keys", json={"name": "chatty", "rate_limit_per_minute": 3}
    ).json()
    assert created["rate_limit_per_minute"] == 3
    body = {"prompt": f"rate {uuid.uuid4().hex[:6]}", "width": 256, "height": 256}
    with stack.client(created["key"]) as client:
        assert [client.post("/v1/jobs", json=body).status_code for _ in range(3)] == [202, 202, 202]
        refused = client.post("/v1/jobs", json=body)
        assert_error(refused, 429, "rate_limited", None)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Reading is not submitting.
        assert client.get("/v1/jobs").status_code == 200
    with stack.client(stack.create_key("unlimited neighbour")) as other:
        assert other.post("/v1/jobs", json=body).status_code == 202


def test_concurrency_slot_comes_back_when_a_job_ends(stack: Stack, admin: httpx.Client) -> None:
    created = admin.post(
        "/v1/admin/keys", json={"name": "one at a time", "max_concurrent_jobs": 1}
    ).json()
    failing = f"slot fails {uuid.uuid4().hex[:6]}"
    stack.simulator.script(failing, ["3036"])
    with stack.client(created["key"]) as client:
        for prompt in (
            f"slot {uuid.uuid4().hex[:6]}",
            failing,
            f"slot again {uuid.uuid4().hex[:6]}",
        ):
            response = client.post("/v1/jobs", json={"prompt": prompt, "width": 256, "height": 256})
            assert response.status_code == 202, response.text
            wait_for_job(client, response.json()["id"], statuses=FINAL)
    assert admin.get(f"/v1/admin/keys/{created['id']}").json()["active_jobs"] == 0

"""Usage reports equal the ledger; prices are effective-dated data."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

import app.models  # noqa: F401  # every table, for the ORM's foreign keys
from app.billing import rollup
from app.billing.models import Charge
from app.core.db import make_engine
from app.core.settings import normalize_database_url
from tests.harness.processes import wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, assert_error, wait_for_job


def run_jobs(client: httpx.Client, bodies: list[dict[str, object]]) -> list[dict[str, object]]:
    ids = [client.post("/v1/jobs", json=body).json()["id"] for body in bodies]
    return [wait_for_job(client, job_id, statuses=FINAL) for job_id in ids]


def test_usage_equals_the_ledger(stack: Stack) -> None:
    admin = stack.client(stack.create_key("accountant", "--admin"))
    key = stack.create_key("spender")
    failing = f"fails {uuid.uuid4().hex[:6]}"
    stack.simulator.script(failing, ["3036"])
    with stack.client(key) as client:
        done = run_jobs(
            client,
            [
                {"prompt": "a", "width": 512, "height": 512},
                {"prompt": "b", "width": 512, "height": 512},
                {"prompt": "c", "model": "flux-2-dev", "width": 512, "height": 512, "steps": 10},
                {"prompt": failing, "width": 512, "height": 512},
            ],
        )
        assert [job["status"] for job in done] == ["succeeded"] * 3 + ["failed"]
        key_id = stack.sql("SELECT api_key_id FROM jobs WHERE id = :id", id=done[0]["id"])[0][0]

        by_model = client.get("/v1/usage", params={"group_by": "model"}).json()
        assert by_model["object"] == "usage"
        assert by_model["group_by"] == "model"
        assert by_model["data"] == [
            {
                "group": "flux-2-dev",
                "jobs": 1,
                "output_tiles": 1,
                "input_tiles": 0,
                "charged_usd": "0.0041",
            },
            {
                "group": "flux-2-klein-4b",
                "jobs": 2,
                "output_tiles": 2,
                "input_tiles": 0,
                "charged_usd": "0.000574",
            },
        ]
        assert by_model["total"]["charged_usd"] == "0.004674"
        [(ledger,)] = stack.sql(
            "SELECT sum(amount_nanos) FROM charges WHERE api_key_id = :id", id=key_id
        )
        assert int(ledger) == 4_674_000

        by_day = client.get("/v1/usage").json()
        today = datetime.now(UTC).date().isoformat()
        assert [(row["group"], row["jobs"]) for row in by_day["data"]] == [(today, 3)]

        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        later = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
        assert client.get("/v1/usage", params={"from": tomorrow, "to": later}).json()["data"] == []
        assert_error(
            client.get("/v1/usage", params={"from": tomorrow}), 422, "invalid_parameter", "to"
        )
        assert_error(
            client.get("/v1/usage", params={"from": "yesterday"}), 422, "invalid_parameter", "from"
        )
        assert_error(
            client.get("/v1/usage", params={"group_by": "key"}),
            422,
            "invalid_parameter",
            "group_by",
        )
        assert_error(client.get("/v1/admin/usage"), 403, "admin_required", None)

    everyone = admin.get("/v1/admin/usage", params={"group_by": "key", "from": "2000-01-01"}).json()
    [mine] = [row for row in everyone["data"] if row["group"] == key_id]
    assert (mine["jobs"], mine["charged_usd"]) == (3, "0.004674")
    [(all_charges,)] = stack.sql("SELECT sum(amount_nanos) FROM charges")
    total_nanos = round(float(everyone["total"]["charged_usd"]) * 1e9)
    assert total_nanos == int(all_charges)
    assert (
        sum(row["jobs"] for row in everyone["data"])
        == stack.sql("SELECT count(*) FROM charges")[0][0]
    )

    download = admin.get(
        "/v1/admin/usage", params={"group_by": "key", "key_id": key_id, "format": "csv"}
    )
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(download.text)))
    assert rows == [
        ["key", "jobs", "output_tiles", "input_tiles", "charged_usd"],
        [key_id, "3", "3", "0", "0.004674"],
    ]


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def price_stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway of its own: these tests change prices."""
    with running_gateway(log_dir, backend=request.param, latency=0.05, worker=True) as gateway:
        yield gateway


def test_new_prices_apply_from_their_date_and_old_jobs_keep_theirs(price_stack: Stack) -> None:
    admin = price_stack.client(price_stack.create_key("pricing", "--admin"))
    client = price_stack.client(price_stack.create_key("buyer"))
    body = {"prompt": "before", "width": 512, "height": 512}
    before = client.post("/v1/jobs", json=body).json()
    starts = datetime.now(UTC) + timedelta(seconds=2)
    added = admin.post(
        "/v1/admin/prices",
        json={
            "model": "flux-2-klein-4b",
            "effective_from": starts.isoformat(),
            "output_unit_usd": "0.0005",
            "input_unit_usd": "0.0001",
        },
    )
    assert added.status_code == 201, added.text
    assert added.json()["output_unit_usd"] == "0.0005"
    duplicate = admin.post(
        "/v1/admin/prices",
        json={
            "model": "flux-2-klein-4b",
            "effective_from": starts.isoformat(),
            "output_unit_usd": "1",
            "input_unit_usd": "1",
        },
    )
    assert_error(duplicate, 409, "price_exists", None)
    assert client.post("/v1/quote", json=body).json()["estimated"] == "0.000287"
    time.sleep(max(0.0, (starts - datetime.now(UTC)).total_seconds()) + 0.2)
    assert client.post("/v1/quote", json=body).json()["estimated"] == "0.0005"
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["flux-2-klein-4b"]["pricing"]["output_unit_usd"] == "0.0005"

    after = client.post("/v1/jobs", json={**body, "prompt": "after"}).json()
    assert wait_for_job(client, before["id"], statuses=FINAL)["cost"]["charged"] == "0.000287"
    assert wait_for_job(client, after["id"], statuses=FINAL)["cost"]["charged"] == "0.0005"
    listed = admin.get("/v1/admin/prices").json()["data"]
    assert [p["output_unit_usd"] for p in listed if p["model"] == "flux-2-klein-4b"] == [
        "0.000287",
        "0.0005",
    ]
    assert_error(client.get("/v1/admin/prices"), 403, "admin_required", None)
    bad = admin.post(
        "/v1/admin/prices",
        json={
            "model": "sdxl",
            "effective_from": starts.isoformat(),
            "output_unit_usd": "1",
            "input_unit_usd": "1",
        },
    )
    assert_error(bad, 422, "invalid_parameter", "model")


def test_prices_are_read_at_most_once_a_second_per_process(price_stack: Stack) -> None:
    """A quote reads its key (one statement) and, without the schedule kept in memory, the
    price in force (another): 20 quotes within a second or two read the prices once or twice."""
    with price_stack.client(price_stack.create_key("quoter")) as client:
        body = {"prompt": "how much", "width": 512, "height": 512}
        assert client.post("/v1/quote", json=body).status_code == 200
        before = price_stack.metrics()["fluxgate_db_statements_total"]
        for _ in range(20):
            assert client.post("/v1/quote", json=body).status_code == 200
        read = price_stack.metrics()["fluxgate_db_statements_total"] - before
    # 20 key reads, a schedule read per second, the backlog's query behind the scrape.
    assert read <= 20 + 4, read


def test_cli_adds_and_lists_prices(price_stack: Stack) -> None:
    later = (datetime.now(UTC) + timedelta(days=400)).replace(microsecond=0).isoformat()
    added = price_stack.cli(
        "prices",
        "add",
        "--model",
        "flux-2-dev",
        "--effective-from",
        later,
        "--output-usd",
        "0.0005",
        "--input-usd",
        "0.0003",
        "--per-step",
    )
    assert json.loads(added.stdout)["per_step"] is True
    listed = json.loads(price_stack.cli("prices", "list").stdout)
    assert any(p["model"] == "flux-2-dev" and p["output_unit_usd"] == "0.0005" for p in listed)
    bad = price_stack.cli(
        "prices",
        "add",
        "--model",
        "flux-2-dev",
        "--effective-from",
        "soon",
        "--output-usd",
        "1",
        "--input-usd",
        "1",
        check=False,
    )
    assert bad.returncode == 2
    assert "effective_from" in bad.stderr


HEADER = ["jobs", "output_tiles", "input_tiles", "charged_usd"]


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def quiet_stack(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway without beat: the test decides when the rollup runs."""
    with running_gateway(
        log_dir, backend=request.param, latency=0.05, worker=True, beat=False
    ) as gateway:
        yield gateway


def test_reports_in_any_zone_by_hour_and_day_the_same_before_and_after_the_rollup(
    quiet_stack: Stack,
) -> None:
    stack = quiet_stack
    admin = stack.client(stack.create_key("zones", "--admin"))
    key, key_id, _ = stack.create_key_with_secret("night-owl")
    with stack.client(key) as client:
        done = run_jobs(
            client, [{"prompt": f"p{n}", "width": 512, "height": 512} for n in range(4)]
        )
    assert {job["status"] for job in done} == {"succeeded"}
    # Place the charges around Kolkata's and UTC's midnights two days ago (the ledger as a
    # worker would have written it then).
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    places = [
        day.replace(hour=18, minute=29, second=59, microsecond=999_999),
        day.replace(hour=18, minute=30),
        day.replace(hour=23, minute=59, second=59),
        day + timedelta(days=1),
    ]
    engine = make_engine(normalize_database_url(stack.database_url))
    sessions = sessionmaker(bind=engine)
    try:
        with sessions.begin() as session:
            for job, at in zip(done, places, strict=True):
                charge = session.scalars(select(Charge).where(Charge.job_id == job["id"])).one()
                charge.created_at = at

        def views() -> dict[str, object]:
            found: dict[str, object] = {}
            for tz in ("UTC", "Asia/Kolkata"):
                for group_by in ("hour", "day", "model", "key"):
                    params = {
                        "key_id": key_id,
                        "group_by": group_by,
                        "tz": tz,
                        "from": (day - timedelta(days=1)).date().isoformat(),
                        "to": (day + timedelta(days=3)).date().isoformat(),
                    }
                    view = admin.get("/v1/admin/usage", params=params)
                    assert view.status_code == 200, view.text
                    download = admin.get("/v1/admin/usage", params={**params, "format": "csv"})
                    assert download.headers["content-type"].startswith("text/csv")
                    rows = list(csv.reader(io.StringIO(download.text)))
                    assert rows[0] == [
                        group_by,
                        "jobs",
                        "output_tiles",
                        "input_tiles",
                        "charged_usd",
                    ]
                    assert rows[1:] == [
                        [
                            r["group"],
                            str(r["jobs"]),
                            str(r["output_tiles"]),
                            str(r["input_tiles"]),
                            r["charged_usd"],
                        ]
                        for r in view.json()["data"]
                    ]
                    found[f"{tz} {group_by}"] = view.json()
            return found

        before = views()
        d0, d1 = day.date().isoformat(), (day + timedelta(days=1)).date().isoformat()
        assert [(r["group"], r["jobs"]) for r in before["UTC day"]["data"]] == [(d0, 3), (d1, 1)]  # type: ignore[index]
        assert [(r["group"], r["jobs"]) for r in before["Asia/Kolkata day"]["data"]] == [  # type: ignore[index]
            (d0, 1),
            (d1, 3),
        ]
        assert before["Asia/Kolkata day"]["tz"] == "Asia/Kolkata"  # type: ignore[index]
        assert [r["group"] for r in before["UTC hour"]["data"]] == [  # type: ignore[index]
            f"{d0}T18:00:00+00:00",
            f"{d0}T23:00:00+00:00",
            f"{d1}T00:00:00+00:00",
        ]
        assert [r["group"] for r in before["Asia/Kolkata hour"]["data"]] == [  # type: ignore[index]
            f"{d0}T23:30:00+05:30",
            f"{d1}T04:30:00+05:30",
            f"{d1}T05:30:00+05:30",
        ]
        with sessions.begin() as session:
            assert rollup.roll_up(session, now=datetime.now(UTC)).rows >= 3
        assert views() == before
    finally:
        engine.dispose()

    with stack.client(key) as client:
        own = client.get(
            "/v1/usage",
            params={"group_by": "hour", "tz": "Asia/Kolkata", "from": d1},
        )
        assert own.status_code == 200, own.text
        assert sum(row["jobs"] for row in own.json()["data"]) == 3
        own_csv = client.get("/v1/usage", params={"format": "csv", "from": day.date().isoformat()})
        assert own_csv.text.splitlines()[1:] == [f"{d0},3,3,0,0.000861", f"{d1},1,1,0,0.000287"]
        assert_error(
            client.get("/v1/usage", params={"tz": "Mars/Olympus"}), 422, "invalid_parameter", "tz"
        )
    assert_error(
        admin.get("/v1/admin/usage", params={"tz": "+05:30"}), 422, "invalid_parameter", "tz"
    )
    assert_error(
        admin.get("/v1/admin/usage", params={"group_by": "week"}),
        422,
        "invalid_parameter",
        "group_by",
    )
    assert_error(
        admin.get("/v1/admin/usage", params={"group_by": "hour", "from": "2020-01-01"}),
        422,
        "invalid_parameter",
        "to",
    )


@pytest.mark.parametrize("backend", ["postgres", "embedded"])
def test_beat_runs_the_rollup_through_a_worker(log_dir: Path, backend: str) -> None:
    with running_gateway(
        log_dir, backend=backend, latency=0.05, worker=True, usage_rollup_interval_seconds="0.5"
    ) as gateway:

        def rolled() -> bool:
            [(until,)] = gateway.sql("SELECT rolled_until FROM usage_rollup_state")
            return until is not None

        wait_until(rolled, timeout=60, what="the first rollup")
        assert gateway.sql("SELECT count(*) FROM usage_hours") == [(0,)]

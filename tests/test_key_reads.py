"""The keys as the API shows them, against databases built by the migrations, on both backends:
each key's budget used this period and its active jobs, read for all keys at once (two
statements for a list of keys, not two per key); last month's budget period is not this
month's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session

from app.billing import budgets
from app.billing.models import BudgetPeriod
from app.core.orm import utcnow
from app.jobs.models import Job
from app.keys import service
from app.keys.models import ApiKey
from app.keys.schemas import KeyOut
from tests.harness.schema import (
    job_fields,
    key_fields,
    key_row,
    klein_price_id,
    migrated_engine,
    statements,
)

NANOS_PER_USD = 1_000_000_000


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as built:
        yield built


def add_key(session: Session, name: str, *, budget_usd: int | None, period: str) -> ApiKey:
    key = key_row(
        name,
        id=f"key_{name}",
        budget_nanos=None if budget_usd is None else budget_usd * NANOS_PER_USD,
        budget_period=period,
    )
    session.add(key)
    return key


def keys_shown(
    engine: Engine, *, order: Any
) -> tuple[list[ApiKey], list[KeyOut], list[tuple[str, Any]]]:
    """Every key (in ``order``), as the API shows them, and the statements that took."""
    with Session(engine) as session:
        keys = list(session.scalars(select(ApiKey).order_by(order)))
        seen, listener = statements(engine)
        try:
            shown = service.to_keys_out(session, keys)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    return keys, shown, seen


def test_a_list_of_keys_reads_budgets_and_active_jobs_once(engine: Engine) -> None:
    now = utcnow()
    last_month = datetime(now.year - (now.month == 1), (now.month - 2) % 12 + 1, 1, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        price_id = klein_price_id(session)
        monthly = [add_key(session, f"m{n}", budget_usd=10, period="month") for n in range(4)]
        total = add_key(session, "total", budget_usd=50, period="total")
        lapsed = add_key(session, "lapsed", budget_usd=10, period="month")
        unlimited = add_key(session, "free", budget_usd=None, period="month")
        session.flush()
        for n, key in enumerate([*monthly, total]):
            start = budgets.period_start(key, now)
            session.add(
                BudgetPeriod(
                    api_key_id=key.id,
                    period_start=start,
                    held_nanos=n * 1_000,
                    charged_nanos=n * 1_000_000,
                )
            )
        # Last month's spending is not this month's, beside this month's or alone.
        for key in (monthly[1], lapsed):
            session.add(
                BudgetPeriod(
                    api_key_id=key.id,
                    period_start=last_month,
                    held_nanos=7,
                    charged_nanos=7 * NANOS_PER_USD,
                )
            )
        session.execute(
            insert(Job),
            [job_fields(monthly[2].id, price_id) for _ in range(3)]
            + [job_fields(unlimited.id, price_id, status="running")]
            + [job_fields(unlimited.id, price_id, status="succeeded")],
        )

    keys, shown, seen = keys_shown(engine, order=ApiKey.name)
    assert len(seen) == 2, [statement for statement, _ in seen]
    by_name = {out.name: out for out in shown}
    assert [out.id for out in shown] == [key.id for key in keys]
    assert {name: out.budget_used_usd for name, out in by_name.items()} == {
        "free": "0",
        "lapsed": "0",
        "m0": "0",
        "m1": "0.001001",
        "m2": "0.002002",
        "m3": "0.003003",
        "total": "0.004004",
    }
    assert {name: out.active_jobs for name, out in by_name.items()} == {
        "free": 1,
        "lapsed": 0,
        "m0": 0,
        "m1": 0,
        "m2": 3,
        "m3": 0,
        "total": 0,
    }


def test_more_keys_than_a_statement_takes_parameters_are_read_in_batches(engine: Engine) -> None:
    """A budget read takes two parameters a key: one statement for 35,001 keys passed the
    65,535 a PostgreSQL statement takes, and the list of keys failed (SQLite's limit is its
    build's: Debian's takes them)."""
    count = 35_001  # a last batch of one
    now = utcnow()
    with Session(engine) as session, session.begin():
        price_id = klein_price_id(session)
        session.execute(
            insert(ApiKey),
            [
                key_fields(
                    f"k{n:05d}",
                    id=f"key_{n:05d}",
                    budget_nanos=NANOS_PER_USD,
                    budget_period="month",
                )
                for n in range(count)
            ],
        )
        # The first key and the last, in the first batch and the last, have used something.
        for n, key_id in enumerate(("key_00000", f"key_{count - 1:05d}"), start=1):
            session.add(
                BudgetPeriod(
                    api_key_id=key_id,
                    period_start=datetime(now.year, now.month, 1, tzinfo=UTC),
                    held_nanos=n,
                    charged_nanos=n * 1_000,
                )
            )
            session.execute(insert(Job), [job_fields(key_id, price_id) for _ in range(n)])

    keys, shown, seen = keys_shown(engine, order=ApiKey.id)
    assert len(seen) == 2 * -(-count // service.KEYS_PER_READ)
    assert [out.id for out in shown] == [key.id for key in keys]
    used = {out.id: (out.budget_used_usd, out.active_jobs) for out in shown if out.active_jobs}
    assert used == {"key_00000": ("0.000001001", 1), f"key_{count - 1:05d}": ("0.000002002", 2)}
    assert sum(out.budget_used_usd != "0" for out in shown) == 2

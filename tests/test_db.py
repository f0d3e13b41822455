"""Transactions: retried while the database is briefly unavailable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import make_engine, with_transaction


def test_with_transaction_retries_when_the_database_is_briefly_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'retry.db'}")
    sessions = sessionmaker(bind=engine)
    calls = []

    def work(session: Session) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("too many clients already"))
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    assert with_transaction(work, backoff_seconds=0.001, sessions=sessions) == 42
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(OperationalError):
        # A deadline that leaves room for one retry, not two.
        with_transaction(
            work, until=time.monotonic() + 0.15, backoff_seconds=0.1, sessions=sessions
        )
    assert len(calls) == 2

"""Per-key limits on submissions: how many a minute, and the refusal both limits give.

Submissions per minute count in Redis or in the database (app/backends.py picks the counter).
Jobs queued or running at once are counted where jobs are admitted (app/jobs/accounting.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

import redis
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import metrics
from app.core.db import rows_affected, session_scope
from app.core.errors import FluxgateError
from app.keys.models import RateWindow


class RateLimited(FluxgateError):
    status_code = 429
    code = "rate_limited"


class RateCounter(Protocol):
    def count(self, *, key_id: str, window: datetime, limit: int) -> bool:
        """Count one submission in the key's minute ``window``; whether it is within
        ``limit``. It counts even if the submission is refused later."""


class RedisRateCounter:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def count(self, *, key_id: str, window: datetime, limit: int) -> bool:
        name = f"fluxgate:rate:{key_id}:{window:%Y%m%d%H%M}"
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, 120)
        count, _ = pipe.execute()
        return int(count) <= limit


class DatabaseRateCounter:
    """A row per key and minute, counted in a transaction of its own."""

    def count(self, *, key_id: str, window: datetime, limit: int) -> bool:
        with session_scope() as session:
            return self._count(session, key_id=key_id, window=window, limit=limit)

    @staticmethod
    def _count(session: Session, *, key_id: str, window: datetime, limit: int) -> bool:
        """Count one submission unless the window is full; whether it was counted."""
        if session.get(RateWindow, (key_id, window)) is None:
            try:
                with session.begin_nested():
                    session.add(RateWindow(api_key_id=key_id, window_start=window, count=0))
            except IntegrityError:
                pass  # a concurrent submission made it
        counted = session.execute(
            update(RateWindow)
            .where(
                RateWindow.api_key_id == key_id,
                RateWindow.window_start == window,
                RateWindow.count < limit,
            )
            .values(count=RateWindow.count + 1)
            .execution_options(synchronize_session=False)
        )
        return rows_affected(counted) == 1


def check_submission_rate(counter: RateCounter, *, key_id: str, limit: int, now: datetime) -> None:
    """Count a submission against the key's per-minute ``limit``; 429 once it is used up."""
    window = now.replace(second=0, microsecond=0)
    if not counter.count(key_id=key_id, window=window, limit=limit):
        wait = max(1, int((window + timedelta(minutes=1) - now).total_seconds() + 0.999))
        metrics.SUBMISSIONS_REFUSED.labels("rate_limit_per_minute").inc()
        raise RateLimited(
            f"this key may submit {limit} jobs per minute; try again in {wait}s",
            headers={"Retry-After": str(wait)},
        )

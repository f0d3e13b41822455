"""Per-key limits: job submissions per minute, and jobs queued or running at once.

Submissions per minute count in Redis where ``FLUXGATE_REDIS_URL`` is set (production), else in
the database (the embedded default). The concurrency slot is a counter on the key's row, taken
and given back by conditional updates, so concurrent submissions never exceed it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

import redis
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.billing.models import RateWindow
from app.core.db import rows_affected
from app.core.errors import FluxgateError
from app.keys.models import ApiKey


class RateLimited(FluxgateError):
    status_code = 429
    code = "rate_limited"


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _count_in_redis(url: str, key_id: str, window: datetime) -> int:
    name = f"fluxgate:rate:{key_id}:{window:%Y%m%d%H%M}"
    pipe = _redis(url).pipeline()
    pipe.incr(name)
    pipe.expire(name, 120)
    count, _ = pipe.execute()
    return int(count)


def _count_in_database(session: Session, key_id: str, window: datetime, limit: int) -> bool:
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


def check_submission_rate(
    session: Session, *, api_key: ApiKey, now: datetime, redis_url: str | None
) -> None:
    """Count a submission against the key's per-minute limit; 429 once it is used up."""
    limit = api_key.rate_limit_per_minute
    if limit is None:
        return
    window = now.replace(second=0, microsecond=0)
    if redis_url is not None:
        allowed = _count_in_redis(redis_url, api_key.id, window) <= limit
    else:
        allowed = _count_in_database(session, api_key.id, window, limit)
    if not allowed:
        wait = max(1, int((window + timedelta(minutes=1) - now).total_seconds() + 0.999))
        raise RateLimited(
            f"this key may submit {limit} jobs per minute; try again in {wait}s",
            headers={"Retry-After": str(wait)},
        )


def take_slot(session: Session, *, api_key: ApiKey) -> None:
    """One more job queued or running for the key; 429 when its limit is reached."""
    conditions = [ApiKey.id == api_key.id]
    if api_key.max_concurrent_jobs is not None:
        conditions.append(ApiKey.active_jobs < api_key.max_concurrent_jobs)
    taken = session.execute(
        update(ApiKey)
        .where(*conditions)
        .values(active_jobs=ApiKey.active_jobs + 1)
        .execution_options(synchronize_session=False)
    )
    if rows_affected(taken) != 1:
        raise RateLimited(
            f"this key may have {api_key.max_concurrent_jobs} jobs queued or running at once; "
            "try again when one has finished",
            headers={"Retry-After": "1"},
        )


def free_slot(session: Session, *, api_key_id: str) -> None:
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == api_key_id, ApiKey.active_jobs > 0)
        .values(active_jobs=ApiKey.active_jobs - 1)
        .execution_options(synchronize_session=False)
    )

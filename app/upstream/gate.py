"""The account-wide upstream limiter: all workers together stay under ``FLUXGATE_UPSTREAM_RPM``
and, when Workers AI answers 429, all of them hold back together.

GCRA (a token bucket kept as one timestamp): each call moves the "theoretical arrival time"
forward by 60/RPM seconds; a call may go when that time is no more than one second's worth of
calls ahead of now. State lives in Redis (one atomic script, Redis's clock) or in the database
(a compare-and-set on one row: the embedded default); app/backends.py picks one.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.core import metrics
from app.core.db import rows_affected, with_transaction
from app.upstream.models import UpstreamGate

MICROS = 1_000_000


class Gate(Protocol):
    def acquire(self) -> float:
        """0.0 when a call may go now (and is counted); else seconds to wait first."""

    def pause(self, seconds: float) -> None:
        """Hold every worker back for ``seconds`` (the upstream said it is overloaded)."""


def _pacing(rpm: int) -> tuple[int, int]:
    """(interval, burst tolerance) in microseconds: one second's worth of calls at once."""
    interval = 60 * MICROS // rpm
    burst_calls = max(1, rpm // 60)
    return interval, interval * (burst_calls - 1)


_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return paused - now end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowed_at = tat - tonumber(ARGV[2])
if now < allowed_at then return allowed_at - now end
redis.call('SET', KEYS[1], tat + tonumber(ARGV[1]), 'PX', 3600000)
return 0
"""

_PAUSE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local until_us = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > paused then redis.call('SET', KEYS[1], until_us, 'PX', 3600000) end
return until_us
"""


class RedisGate:
    TAT_KEY = "fluxgate:upstream:tat"
    PAUSE_KEY = "fluxgate:upstream:paused_until"

    def __init__(self, client: redis.Redis, *, rpm: int) -> None:
        self._redis = client
        self._interval, self._burst = _pacing(rpm)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._pause = self._redis.register_script(_PAUSE)

    def acquire(self) -> float:
        wait_us = self._acquire(
            keys=[self.TAT_KEY, self.PAUSE_KEY], args=[self._interval, self._burst]
        )
        return int(wait_us) / MICROS

    def pause(self, seconds: float) -> None:
        self._pause(keys=[self.PAUSE_KEY], args=[int(seconds * MICROS)])


class DatabaseGate:
    def __init__(self, sessions: sessionmaker[Session], *, rpm: int) -> None:
        self._sessions = sessions
        self._interval, self._burst = _pacing(rpm)

    def _try_acquire(self, session: Session) -> float | None:
        row = session.get_one(UpstreamGate, 1, populate_existing=True)
        now = int(time.time() * MICROS)
        if row.paused_until_us > now:
            return (row.paused_until_us - now) / MICROS
        tat = max(row.tat_us, now)
        if now < tat - self._burst:
            return (tat - self._burst - now) / MICROS
        moved = session.execute(
            update(UpstreamGate)
            .where(UpstreamGate.id == 1, UpstreamGate.tat_us == row.tat_us)
            .values(tat_us=tat + self._interval)
        )
        return 0.0 if rows_affected(moved) == 1 else None  # None: another worker moved it

    def acquire(self) -> float:
        # Only another process can win the compare-and-set in between (this process's threads
        # ask one at a time: wait_for_turn).
        while True:
            wait = with_transaction(self._try_acquire, sessions=self._sessions)
            if wait is not None:
                return wait

    def pause(self, seconds: float) -> None:
        until = int((time.time() + seconds) * MICROS)

        def extend(session: Session) -> None:
            session.execute(
                update(UpstreamGate)
                .where(UpstreamGate.id == 1, UpstreamGate.paused_until_us < until)
                .values(paused_until_us=until)
            )

        with_transaction(extend, sessions=self._sessions)


# The threads of a process that want a turn queue on this lock, and only the one holding it
# asks the shared state and sleeps until its turn: the others sleep on the lock, and each is
# woken alone, once the one ahead has had its turn. (Each asking for itself, all of them slept
# the same wait and then asked again together, to be told to wait again but one.)
_ASKING = threading.Lock()


def wait_for_turn(gate: Gate, *, max_sleep: float = 1.0) -> float:
    """Block until the gate lets one call through; the seconds waited."""
    started = time.monotonic()
    with _ASKING:
        while (wait := gate.acquire()) > 0:
            time.sleep(min(wait, max_sleep))
    waited = time.monotonic() - started
    metrics.UPSTREAM_LIMITER_WAIT.observe(waited)
    return waited

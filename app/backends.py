"""Redis where ``FLUXGATE_REDIS_URL`` is set (servers apart), else the local stand-ins (the
database, a folder on disk, sockets on one machine): decided here, once per process, for every
piece that has both kinds. Each edge (the API, a worker, beat) calls :func:`connect` at
start-up and hands the pieces out from what it returns.

| piece | with Redis | without |
|---|---|---|
| broker | Redis (``FLUXGATE_BROKER_URL``, else the Redis URL) | a folder (``filesystem://``) |
| submissions per minute | a Redis counter | a row per key and minute |
| account-wide upstream limiter | one Redis script | a compare-and-set on one row |
| job-change notifications | Redis pub/sub | a Unix socket per API process |
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import redis

from app.core import outbox, queue
from app.core.db import get_sessionmaker, with_transaction
from app.core.notifications import Carrier, RedisCarrier, SocketCarrier, encode_change
from app.core.settings import Settings
from app.jobs.execution import message_lost
from app.keys.limits import DatabaseRateCounter, RateCounter, RedisRateCounter
from app.upstream.gate import DatabaseGate, Gate, RedisGate

logger = logging.getLogger("fluxgate.backends")

FILESYSTEM_TRANSPORT = "app.core.broker_transports:AtomicFilesystemTransport"
REDIS_TRANSPORT = "app.core.broker_transports:RecoveringRedisTransport"


@dataclass(frozen=True)
class Backends:
    broker: queue.Broker
    rate_counter: RateCounter
    upstream_gate: Gate
    notifications: Carrier | None


@lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    """One client (and connection pool) per URL in this process."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def broker(settings: Settings) -> queue.Broker:
    folder = settings.broker_folder
    if folder is None:
        return queue.Broker(
            settings.effective_broker_url,
            REDIS_TRANSPORT,
            {
                # Messages of a worker that died unacked come back after this; the sweeper
                # usually gets there first (job_lease_seconds).
                "visibility_timeout": max(3600, int(settings.job_lease_seconds * 2)),
                "socket_connect_timeout": 5,
            },
        )
    messages = Path(folder) / "messages"
    control = Path(folder) / "control"
    for path in (messages, control):
        path.mkdir(parents=True, exist_ok=True)
    return queue.Broker(
        "filesystem://",
        FILESYSTEM_TRANSPORT,
        {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "control_folder": str(control),
            "store_processed": False,
            # Pick-up latency of a queued job: the transport polls the folder.
            "polling_interval": 0.1,
        },
    )


def build(settings: Settings) -> Backends:
    if settings.redis_url is not None:
        client = redis_client(settings.redis_url)
        return Backends(
            broker=broker(settings),
            rate_counter=RedisRateCounter(client),
            upstream_gate=RedisGate(client, rpm=settings.upstream_rpm),
            notifications=RedisCarrier(client, settings.redis_url),
        )
    folder = settings.broker_folder
    if folder is None:
        logger.warning("a Redis broker but no FLUXGATE_REDIS_URL: job notifications are off")
    return Backends(
        broker=broker(settings),
        rate_counter=DatabaseRateCounter(),
        upstream_gate=DatabaseGate(get_sessionmaker(), rpm=settings.upstream_rpm),
        notifications=None if folder is None else SocketCarrier(folder),
    )


_current: Backends | None = None
_lock = threading.Lock()


def connect(settings: Settings) -> Backends:
    """Build this process's pieces, point the broker port at the broker and connect the outbox;
    call once at start-up (again: the same pieces)."""
    global _current
    if _current is not None:  # every task asks: no lock once connected
        return _current
    with _lock:
        if _current is None:
            backends = build(settings)
            queue.configure(settings, backends.broker)
            carrier = backends.notifications
            outbox.connect(
                outbox.Connections(
                    publish_change=partial(_publish_change, carrier),
                    job_unsent=_leave_for_the_sweeper,
                )
            )
            _current = backends
        return _current


def _publish_change(carrier: Carrier | None, change: outbox.JobChanged) -> None:
    if carrier is not None:
        carrier.publish(encode_change(change.job_id, change.status, change.job))


def _leave_for_the_sweeper(job_id: str) -> None:
    with_transaction(lambda session: message_lost(session, job_id=job_id))

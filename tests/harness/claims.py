"""A stack's own share of the shared servers: a new PostgreSQL database, and a Redis db number
claimed so that test sessions and benchmark runs on one machine never flush each other's."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import redis

from tests.harness.processes import StackError

PG_ADMIN_URL = os.environ.get(
    "FLUXGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST = os.environ.get("FLUXGATE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FLUXGATE_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"
# In db 0, one key per claimed db number. Every checkout's tests and benchmarks use this key,
# so they all see each other's claims.
CLAIM_KEY = "fluxgate-test-owner:{number}"


@contextmanager
def postgres_database(
    admin_url: str = PG_ADMIN_URL, *, prefix: str = "fluxgate_test"
) -> Iterator[str]:
    """The URL of a new empty database ``<prefix>_<hex>``; dropped afterwards, connections
    or not."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class RedisDb:
    """One numbered database of a Redis server (``server_url``: ``redis://host:port``)."""

    server_url: str
    number: int

    @property
    def url(self) -> str:
        return f"{self.server_url}/{self.number}"

    def size(self) -> int:
        with redis.Redis.from_url(self.url) as client:
            return int(client.dbsize())

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushdb()


_claimed: set[RedisDb] = set()


@contextmanager
def redis_db(
    server_url: str = REDIS_URL,
    *,
    owner: str = "test",
    ttl_seconds: int = 3600,
    only_empty: bool = False,
) -> Iterator[RedisDb]:
    """A Redis db number of 1..15 of our own, flushed before and after use.

    The claim is a key in db 0 that expires after ``ttl_seconds``, so a run that died leaves
    its number to others in time. ``only_empty`` also passes over a db that holds keys though
    nobody claimed it (someone may be using it by hand).
    """
    number = _claim(server_url, owner=owner, ttl_seconds=ttl_seconds, only_empty=only_empty)
    claimed = RedisDb(server_url, number)
    _claimed.add(claimed)
    try:
        yield claimed
    finally:
        claimed.flush()
        with redis.Redis.from_url(f"{server_url}/0") as admin:
            admin.delete(CLAIM_KEY.format(number=number))
        _claimed.discard(claimed)


def _claim(server_url: str, *, owner: str, ttl_seconds: int, only_empty: bool) -> int:
    with redis.Redis.from_url(f"{server_url}/0") as admin:
        for number in range(15, 0, -1):
            db = RedisDb(server_url, number)
            if db in _claimed:
                continue
            key = CLAIM_KEY.format(number=number)
            if not admin.set(key, f"{owner}:{os.getpid()}", nx=True, ex=ttl_seconds):
                continue
            if only_empty and db.size() != 0:
                admin.delete(key)
                continue
            db.flush()
            return number
    raise StackError(f"no free Redis db number in 1..15 on {server_url}")

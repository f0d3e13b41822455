"""Dashboard sessions: an admin key is presented once at login and exchanged for an opaque,
server-side session; the key never reaches the browser again.

A session ends at logout, after ``idle`` without a request, ``absolute`` after login, or as soon
as its admin key is revoked (checked on every request, so nothing needs to find and delete
sessions when a key is revoked). Failed logins are counted per client address and window.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import rows_affected
from app.core.errors import FluxgateError
from app.core.settings import Settings
from app.dashboard.models import AdminSession, LoginFailure
from app.keys.models import ApiKey
from app.keys.service import authenticate, hash_key

# How often a session's idle clock is pushed forward: not a write on every page.
TOUCH_EVERY = timedelta(minutes=1)


class TooManyLogins(FluxgateError):
    status_code = 429
    code = "too_many_logins"


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionPolicy:
        return cls(
            idle=timedelta(seconds=settings.admin_session_idle_seconds),
            absolute=timedelta(seconds=settings.admin_session_max_seconds),
        )


@dataclass(frozen=True)
class Opened:
    token: str  # the cookie's value, shown to the browser once, never stored
    admin_session: AdminSession


@dataclass(frozen=True)
class Current:
    admin_session: AdminSession
    api_key: ApiKey


def log_in(
    session: Session,
    *,
    presented: str,
    address: str,
    now: datetime,
    policy: SessionPolicy,
    max_failures: int,
    window: timedelta,
) -> Opened | None:
    """A new session for a live admin key, or ``None`` (the failure stays counted). Raises
    :class:`TooManyLogins` once ``address`` has failed ``max_failures`` times in its window.

    The attempt is counted before the key is checked, in one statement that locks the
    address's row until the request commits: parallel guesses take turns, none gets past the
    limit by being checked against the same count."""
    window_start = _window_start(now, window)
    if _count_attempt(session, address=address, window_start=window_start, by=1) > max_failures:
        wait = int((window_start + window - now).total_seconds()) + 1
        raise TooManyLogins(
            f"too many failed logins from this address; try again in {wait}s",
            headers={"Retry-After": str(wait)},
        )
    api_key = authenticate(session, presented=presented.strip())
    if api_key is None or not api_key.is_admin:
        return None
    _count_attempt(session, address=address, window_start=window_start, by=-1)  # not a failure
    # Ended sessions are cleared here, where sessions are made: no job needed to do it.
    session.execute(
        delete(AdminSession).where(
            or_(AdminSession.expires_at <= now, AdminSession.last_seen_at <= now - policy.idle)
        )
    )
    token = secrets.token_urlsafe(32)
    admin_session = AdminSession(
        token_hash=hash_key(token),
        api_key_id=api_key.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + policy.absolute,
    )
    session.add(admin_session)
    session.flush()
    return Opened(token=token, admin_session=admin_session)


def throttled_address(host: str | None) -> str:
    """Whom failed logins are counted against: the client's address, or its /64 for IPv6
    (one host usually holds a whole /64, and could otherwise pick a fresh address per guess)."""
    if host is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _window_start(now: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=now.tzinfo)


def _count_attempt(session: Session, *, address: str, window_start: datetime, by: int) -> int:
    """Add ``by`` to the address's count in the window; the count after it."""
    counted = session.execute(
        update(LoginFailure)
        .where(LoginFailure.address == address, LoginFailure.window_start == window_start)
        .values(count=LoginFailure.count + by)
        .returning(LoginFailure.count)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if counted is not None:
        return int(counted)
    # The first attempt of a window: older windows of every address are done with.
    session.execute(delete(LoginFailure).where(LoginFailure.window_start < window_start))
    try:
        with session.begin_nested():
            session.add(LoginFailure(address=address, window_start=window_start, count=by))
    except IntegrityError:  # a concurrent attempt made the row first
        return _count_attempt(session, address=address, window_start=window_start, by=by)
    return by


def current(
    session: Session, *, token: str, now: datetime, policy: SessionPolicy
) -> Current | None:
    """The live session behind a cookie and its admin key, or ``None``. Pushes the idle clock
    forward. An ended session's row is left to the next login's clean-up: the request that
    finds it answers with the login form and commits nothing."""
    found = session.execute(
        select(AdminSession, ApiKey)
        .join(ApiKey, ApiKey.id == AdminSession.api_key_id)
        .where(AdminSession.token_hash == hash_key(token))
    ).one_or_none()
    if found is None:
        return None
    admin_session, api_key = found.tuple()
    idle_until = admin_session.last_seen_at + policy.idle
    live_key = api_key.revoked_at is None and api_key.is_admin
    if not live_key or now >= admin_session.expires_at or now >= idle_until:
        return None
    if now - admin_session.last_seen_at >= TOUCH_EVERY:
        admin_session.last_seen_at = now
        session.flush()
    return Current(admin_session=admin_session, api_key=api_key)


def log_out(session: Session, *, token: str) -> None:
    session.execute(delete(AdminSession).where(AdminSession.token_hash == hash_key(token)))


def csrf_matches(admin_session: AdminSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        admin_session.csrf_token.encode(), presented.encode()
    )


def purge_ended(session: Session, *, now: datetime, policy: SessionPolicy, limit: int) -> int:
    """Delete up to ``limit`` ended sessions (beat's purge: logins clear them too, but a
    dashboard nobody signs in to would keep them); how many."""
    ended = (
        select(AdminSession.token_hash)
        .where(or_(AdminSession.expires_at <= now, AdminSession.last_seen_at <= now - policy.idle))
        .limit(limit)
    )
    return rows_affected(
        session.execute(
            delete(AdminSession)
            .where(AdminSession.token_hash.in_(ended))
            .execution_options(synchronize_session=False)
        )
    )


def purge_closed_windows(session: Session, *, now: datetime, window: timedelta, limit: int) -> int:
    """Delete up to ``limit`` failed-login counts of windows that have closed; how many."""
    closed = (
        select(LoginFailure.address, LoginFailure.window_start)
        .where(LoginFailure.window_start <= now - window)
        .limit(limit)
    )
    return rows_affected(
        session.execute(
            delete(LoginFailure)
            .where(tuple_(LoginFailure.address, LoginFailure.window_start).in_(closed))
            .execution_options(synchronize_session=False)
        )
    )

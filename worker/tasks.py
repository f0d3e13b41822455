"""The worker's edge: the Celery tasks, each a transaction edge. The logic is in
app.jobs.execution and app.webhooks.service; messages leave through the outbox."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import redis
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from app import backends
from app.billing import rollup
from app.core import logs, outbox, tracing
from app.core.db import with_transaction
from app.core.images import ImageError, ImageInfo, inspect_image
from app.core.metrics import RETENTION_DELETED_BYTES, RETENTION_DELETED_IMAGES
from app.core.orm import utcnow
from app.core.queue import (
    DELIVER_WEBHOOK_TASK,
    FORWARD_TASK,
    PURGE_TASK,
    ROLLUP_USAGE_TASK,
    SWEEP_TASK,
    celery_app,
)
from app.core.settings import Settings, get_settings
from app.dashboard import sessions as admin_sessions
from app.dashboard import thumbnails
from app.jobs import execution, idempotency, retention
from app.upstream.gate import Gate, wait_for_turn
from app.upstream.workers_ai import GenerationResult, UpstreamError, WorkersAIClient
from app.webhooks import sender
from app.webhooks import service as webhooks
from app.webhooks.signing import signed_headers

logger = logging.getLogger("fluxgate.worker")

_client: WorkersAIClient | None = None
_client_lock = threading.Lock()


def upstream_client() -> WorkersAIClient:
    """One client per process, so every thread shares one connection pool."""
    global _client
    with _client_lock:
        if _client is None:
            settings = get_settings()
            account_id, api_token = settings.require_upstream()
            _client = WorkersAIClient(
                base_url=settings.cf_base_url,
                account_id=account_id,
                api_token=api_token,
                connect_timeout=settings.upstream_connect_timeout_seconds,
                read_timeout=settings.upstream_timeout_seconds,
                max_connections=max(settings.worker_concurrency, 1),
            )
        return _client


def call_upstream(claim: execution.Claim) -> tuple[GenerationResult, ImageInfo] | UpstreamError:
    """One upstream call, its image checked; every failure comes back as an UpstreamError."""
    try:
        result = upstream_client().generate(claim.request)
    except UpstreamError as error:
        return error
    try:
        info = inspect_image(result.image)
    except ImageError as error:
        return UpstreamError.bad_response(
            f"Workers AI returned an image that {error}", duration_ms=result.duration_ms
        )
    asked = (claim.request.width, claim.request.height)
    if (info.width, info.height) != asked:
        return UpstreamError.bad_response(
            f"Workers AI returned {info.width}x{info.height}, asked for {asked[0]}x{asked[1]}",
            duration_ms=result.duration_ms,
        )
    return result, info


@dataclass(frozen=True)
class Recorded:
    done: bool  # False: the attempt had lost its lease; nothing was written
    summary: str
    retry_in: float | None = None


def record_outcome(
    session: Session,
    *,
    claim: execution.Claim,
    outcome: tuple[GenerationResult, ImageInfo] | UpstreamError,
    settings: Settings,
) -> Recorded:
    """Write what the attempt produced: the image and charge, a retry, or the failure."""
    if not isinstance(outcome, UpstreamError):
        result, info = outcome
        done = execution.finish_succeeded(
            session,
            claim=claim,
            image=result.image,
            info=info,
            neurons=result.neurons,
            upstream_ms=result.duration_ms,
            public_url=settings.public_url,
        )
        return Recorded(done, "succeeded")
    if outcome.retryable and claim.attempt < settings.upstream_max_attempts:
        retry_in = execution.backoff_seconds(
            claim.attempt,
            base=settings.retry_base_seconds,
            cap=settings.retry_max_seconds,
            retry_after=outcome.retry_after,
        )
        done = execution.schedule_retry(session, claim=claim, error=outcome, delay_seconds=retry_in)
        return Recorded(done, f"retry in {retry_in:.1f}s after {outcome.code}", retry_in)
    done = execution.finish_failed(
        session, claim=claim, error=outcome, public_url=settings.public_url
    )
    return Recorded(done, f"failed: {outcome.code}")


# The database or Redis out of reach (a restart, a network blip).
DEPENDENCY_DOWN = (OperationalError, PoolTimeout, redis.RedisError)
# A dispatch slot that could not claim a job during an outage is sent again this much later.
SLOT_RETRY_SECONDS = 5.0
# A result is written while the lease holds: after it, the sweeper may hand the job on.
LEASE_MARGIN_SECONDS = 1.0


@celery_app.task(name=FORWARD_TASK, ignore_result=True)
def forward_job(job_id: str) -> None:
    """One dispatch slot: wait for the account-wide limiter, then run one attempt of the
    fairest due job (``job_id`` is the job whose submission sent this message; another key's
    job may go first). Safe to run any number of times."""
    settings = get_settings()
    gate = backends.connect(settings).upstream_gate
    try:
        waited = wait_for_turn(gate)
        lease_ends = time.monotonic() + settings.job_lease_seconds
        claim = with_transaction(
            lambda session: execution.claim_next(
                session, lease_seconds=settings.job_lease_seconds, slot_of=job_id
            )
        )
    except DEPENDENCY_DOWN as error:
        # Nothing was claimed. Try the slot again soon, rather than leave the job to the
        # sweeper's REQUEUE_AFTER_SECONDS.
        logger.warning(
            "slot for job %s: %s; sending it again in %.0fs",
            job_id,
            error.__class__.__name__,
            SLOT_RETRY_SECONDS,
        )
        outbox.send_now(outbox.ForwardJob(job_id, countdown=SLOT_RETRY_SECONDS))
        return
    if claim is None:
        logger.debug("message for %s found no due job (all done, canceled or running)", job_id)
        return
    # The job this slot started (maybe not ``job_id``), and the request that submitted it.
    with logs.bound(
        job_id=claim.job_id,
        attempt=claim.attempt,
        key_id=claim.key_id,
        request_id=claim.request_id,
    ):
        if waited > 1:
            logger.info("job %s waited %.1fs for the upstream limiter", claim.job_id, waited)
        # In the claimed job's own trace: this message may have been sent for another job.
        with tracing.job_span(
            tracing.JOB_ATTEMPT_SPAN,
            traceparent=claim.traceparent,
            attributes={
                "fluxgate.job.id": claim.job_id,
                "fluxgate.job.attempt": claim.attempt,
                "fluxgate.upstream.model": claim.request.upstream_model,
            },
        ) as note:
            run_attempt(claim, gate=gate, settings=settings, lease_ends=lease_ends, note=note)


def run_attempt(
    claim: execution.Claim,
    *,
    gate: Gate,
    settings: Settings,
    lease_ends: float,
    note: tracing.Note,
) -> None:
    """Call the upstream for a claimed attempt and write what came back."""
    outcome = call_upstream(claim)
    # What came back (an image is already paid for upstream) is written while the lease holds,
    # through any database outage shorter than that.
    recorded = with_transaction(
        lambda session: record_outcome(session, claim=claim, outcome=outcome, settings=settings),
        until=lease_ends - LEASE_MARGIN_SECONDS,
    )
    if not recorded.done:
        note("fluxgate.job.outcome", "lease lost")
        logger.warning(
            "job %s attempt %s lost its lease; result dropped", claim.job_id, claim.attempt
        )
        return
    note("fluxgate.job.outcome", recorded.summary)
    logger.info("job %s attempt %s %s", claim.job_id, claim.attempt, recorded.summary)
    if isinstance(outcome, UpstreamError) and outcome.http_status == 429 and outcome.retryable:
        # Out of capacity or over the rate: every worker holds back, not just this one.
        try:
            gate.pause(outcome.retry_after or recorded.retry_in or settings.retry_base_seconds)
        except DEPENDENCY_DOWN:
            logger.warning("could not pause the upstream limiter after a 429", exc_info=True)


@celery_app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> None:
    """Re-send jobs whose worker died or whose broker message was lost."""
    settings = get_settings()
    result = with_transaction(
        lambda session: execution.sweep(
            session,
            requeue_after_seconds=settings.requeue_after_seconds,
            max_attempts=settings.upstream_max_attempts,
            public_url=settings.public_url,
        )
    )
    # The due deliveries' messages go out through the outbox as this commits.
    deliveries = with_transaction(
        lambda session: webhooks.sweep(
            session, requeue_after_seconds=settings.requeue_after_seconds
        )
    )
    if deliveries:
        logger.info("sweep: %d webhook deliveries sent", len(deliveries))
    if result.resent or result.failed_expired:
        logger.info(
            "sweep: %d leases expired, %d re-sent, %d failed after exhausting attempts",
            len(result.requeued_expired),
            len(result.resent),
            len(result.failed_expired),
        )


@celery_app.task(name=ROLLUP_USAGE_TASK, ignore_result=True)
def rollup_usage() -> None:
    """Roll closed hours of the ledger up for the usage reports, and sum the ledger's hours for
    their reconciliation line (app/billing/rollup.py)."""
    for what, step in (("usage rollup", rollup.roll_up), ("ledger check", rollup.check_ledger)):
        result = with_transaction(partial(step, now=utcnow()))
        if result.rows:
            logger.info(
                "%s: %d rows for %s .. %s",
                what,
                result.rows,
                result.rolled_from,
                result.rolled_until,
            )


@dataclass
class Purged:
    """What one purge run deleted: images (by role) of how many jobs in how many batches, and
    the rows of each other kind."""

    jobs: int = 0
    batches: int = 0
    images: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)


def _expire_batch(
    session: Session, *, cutoff: datetime, limit: int, now: datetime
) -> retention.ExpiredImages:
    expired = retention.expire_images(session, cutoff=cutoff, limit=limit, now=now)
    thumbnails.forget(session, job_ids=expired.job_ids)
    return expired


def purge(
    settings: Settings,
    *,
    now: datetime | None = None,
    sessions: Callable[[], Session] | None = None,
) -> Purged:
    """Delete what is past its use, each kind in batches of RETENTION_BATCH_SIZE, each batch a
    transaction of its own: stored images (and their thumbnails) IMAGE_RETENTION_DAYS after
    their job completed, and webhook answer excerpts as old (unless that is 0); expired image
    links, idempotency keys past 24 hours, ended dashboard sessions and closed failed-login
    windows. The cut-off is fixed for the run, so it ends however fast jobs complete."""
    now = now or utcnow()
    limit = settings.retention_batch_size
    purged = Purged()
    steps: list[tuple[str, Callable[..., int]]] = []
    if settings.image_retention_days > 0:
        cutoff = now - timedelta(days=settings.image_retention_days)
        while True:
            batch = with_transaction(
                partial(_expire_batch, cutoff=cutoff, limit=limit, now=now), sessions=sessions
            )
            # Counted once the batch has committed: a rolled-back batch deleted nothing.
            for role, count in batch.images.items():
                RETENTION_DELETED_IMAGES.labels(role=role).inc(count)
                RETENTION_DELETED_BYTES.labels(role=role).inc(batch.bytes[role])
            purged.batches += 1
            purged.jobs += len(batch.job_ids)
            purged.images.update(batch.images)
            purged.bytes.update(batch.bytes)
            if len(batch.job_ids) < limit:
                break
        steps.append(("webhook answer excerpts", partial(webhooks.clear_excerpts, before=cutoff)))
        steps.append(("thumbnails left behind", thumbnails.purge_left_behind))
    window = timedelta(seconds=settings.admin_login_window_seconds)
    steps += [
        ("expired image links", partial(retention.purge_expired_links, now=now)),
        ("idempotency keys", partial(idempotency.purge_expired, now=now)),
        (
            "ended dashboard sessions",
            partial(
                admin_sessions.purge_ended,
                now=now,
                policy=admin_sessions.SessionPolicy.from_settings(settings),
            ),
        ),
        (
            "failed-login windows",
            partial(admin_sessions.purge_closed_windows, now=now, window=window),
        ),
    ]
    for what, step in steps:
        while True:
            count = with_transaction(partial(step, limit=limit), sessions=sessions)
            purged.rows[what] += count
            if count < limit:
                break
    return purged


@celery_app.task(name=PURGE_TASK, ignore_result=True)
def purge_expired() -> None:
    """Beat's clean-up, every RETENTION_INTERVAL_SECONDS (see :func:`purge`)."""
    purged = purge(get_settings())
    if purged.jobs:
        logger.info(
            "retention: images of %d jobs deleted in %d batches: %d input (%d bytes), "
            "%d output (%d bytes)",
            purged.jobs,
            purged.batches,
            purged.images["input"],
            purged.bytes["input"],
            purged.images["output"],
            purged.bytes["output"],
        )
    for what, count in purged.rows.items():
        if count:
            logger.info("purge: %s: %d", what, count)


@celery_app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    """One attempt of a webhook delivery, if one is due; the next is scheduled from what it
    saw. Safe to run any number of times: the claim is a conditional UPDATE under a lease."""
    settings = get_settings()
    # An attempt ends by its deadline (the timeout); the lease is well beyond it, so no second
    # worker starts it. If this worker dies, the sweeper sends the attempt once it runs out.
    lease = settings.webhook_timeout_seconds * 2 + 5
    lease_ends = time.monotonic() + lease
    claim = with_transaction(
        lambda session: webhooks.claim(session, delivery_id=delivery_id, lease_seconds=lease)
    )
    if claim is None:
        return
    with logs.bound(
        delivery_id=claim.delivery_id,
        job_id=claim.job_id,
        key_id=claim.key_id,
        attempt=claim.number,
    ):
        attempt_delivery(claim, lease_ends=lease_ends, settings=settings)


def attempt_delivery(
    claim: webhooks.DeliveryClaim, *, lease_ends: float, settings: Settings
) -> None:
    """Send the claimed attempt of a delivery and record what it saw."""
    started_at = utcnow()
    headers = signed_headers(
        message_id=claim.delivery_id, body=claim.payload, secrets=claim.secrets, at=started_at
    )
    result = sender.send(
        claim.url,
        body=claim.payload.encode(),
        headers={**headers, "Content-Type": "application/json"},
        allowed=settings.webhook_networks,
        timeout=settings.webhook_timeout_seconds,
        max_bytes=settings.webhook_max_response_bytes,
    )
    next_at = with_transaction(
        lambda session: webhooks.record_attempt(
            session,
            claim=claim,
            result=result,
            started_at=started_at,
            delays=settings.webhook_delays,
        ),
        until=lease_ends - LEASE_MARGIN_SECONDS,
    )
    logger.info(
        "webhook %s attempt %d: %s%s",
        claim.delivery_id,
        claim.number,
        result.status_code if result.status_code is not None else result.error,
        f"; next at {next_at:%Y-%m-%d %H:%M:%S}" if next_at else "",
    )

"""Every Prometheus metric Fluxgate exports, defined once (``prometheus_client``).

The API serves ``/metrics`` for all its uvicorn processes together: ``fluxgate api`` gives them
one fresh multiprocess directory (prometheus_client's multiprocess mode), so a counter is the
sum over processes and a gauge says how it is combined. A worker serves its own process's
metrics on ``--metrics-port``. Gauges read from the database (queue depth, deliveries) are
collected at scrape time by the API, one query every few seconds at most
(app/http/metrics.py).

Counters that stand for something a transaction did (a job accepted, a charge) are counted
through the outbox (:class:`app.core.outbox.Counted`), so a rollback counts nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds: answers of the API, from a millisecond to a minute-long wait.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds: upstream calls, from a fast klein image to the read timeout.
UPSTREAM_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60, 120)
# Seconds: waits for the account-wide limiter.
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

# --- HTTP (the API) ---
HTTP_REQUESTS = Counter(
    "fluxgate_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "fluxgate_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template.",
    ["route"],
    buckets=HTTP_BUCKETS,
)

# --- Jobs ---
JOBS_SUBMITTED = Counter("fluxgate_jobs_submitted", "Jobs accepted, by model.", ["model"])
JOBS_FINISHED = Counter(
    "fluxgate_jobs_finished",
    "Jobs that reached a final status (succeeded, failed, canceled), by model.",
    ["model", "status"],
)
JOB_RETRIES = Counter(
    "fluxgate_job_retries",
    "Upstream attempts that ended in a retry, by model and upstream outcome.",
    ["model", "outcome"],
)
SUBMISSIONS_REFUSED = Counter(
    "fluxgate_submissions_refused",
    "Submissions refused by a key's limits, by reason "
    "(budget_exceeded, rate_limit_per_minute, max_concurrent_jobs).",
    ["reason"],
)
IDEMPOTENT_REPLAYS = Counter(
    "fluxgate_idempotent_replays",
    "Submissions answered with the job an earlier request under the same Idempotency-Key made.",
)

# --- Workers AI ---
UPSTREAM_CALLS = Counter(
    "fluxgate_upstream_calls",
    "Calls to Workers AI, by model and outcome (200, a Workers AI error code, or the HTTP "
    "status, timeout, connection_error, bad_response).",
    ["model", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "fluxgate_upstream_call_duration_seconds",
    "Time of one call to Workers AI, by model.",
    ["model"],
    buckets=UPSTREAM_BUCKETS,
)
UPSTREAM_IN_FLIGHT = Gauge(
    "fluxgate_upstream_calls_in_flight",
    "Calls to Workers AI this process has open now.",
    multiprocess_mode="livesum",
)
UPSTREAM_LIMITER_WAIT = Histogram(
    "fluxgate_upstream_limiter_wait_seconds",
    "Time a dispatch slot waited for the account-wide limiter before its call.",
    buckets=WAIT_BUCKETS,
)
UPSTREAM_THROTTLED = Counter(
    "fluxgate_upstream_throttled",
    "Answers of Workers AI with HTTP 429 (over the account's rate or out of capacity).",
)

# --- Money ---
CHARGED_NANOS = Counter(
    "fluxgate_charged_nanousd",
    "Nano-USD charged for succeeded jobs, by model.",
    ["model"],
)
UPSTREAM_NEURONS = Counter(
    "fluxgate_upstream_neurons",
    "Neurons Workers AI reported for succeeded calls, by model.",
    ["model"],
)

# --- Webhooks ---
WEBHOOK_ATTEMPTS = Counter(
    "fluxgate_webhook_attempts",
    "Webhook delivery attempts, by outcome (2xx, 3xx, 4xx, 5xx, timeout, refused, "
    "connection_error).",
    ["outcome"],
)

# --- Image retention ---
RETENTION_DELETED_IMAGES = Counter(
    "fluxgate_retention_deleted_images",
    "Stored images deleted after IMAGE_RETENTION_DAYS, by role (input, output).",
    ["role"],
)
RETENTION_DELETED_BYTES = Counter(
    "fluxgate_retention_deleted_bytes",
    "Bytes of stored images deleted after IMAGE_RETENTION_DAYS, by role (input, output).",
    ["role"],
)

# --- The database ---
DB_STATEMENTS = Counter("fluxgate_db_statements", "SQL statements this process has sent.")
DB_CHECKOUTS = Counter(
    "fluxgate_db_checkouts",
    "Connections this process has taken from its pool, one per unit of work.",
)
DB_POOL_IN_USE = Gauge(
    "fluxgate_db_pool_connections_in_use",
    "Pooled database connections checked out now.",
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW = Gauge(
    "fluxgate_db_pool_overflow",
    "Connections open beyond the pool's size now (DB_MAX_OVERFLOW caps them).",
    multiprocess_mode="livesum",
)

# --- Waiting clients (the API) ---
JOB_WATCHERS = Gauge(
    "fluxgate_job_watchers",
    "Requests and event streams waiting on jobs now.",
    multiprocess_mode="livesum",
)
JOB_NOTIFICATIONS = Counter(
    "fluxgate_job_notifications",
    "Job-change notifications received by the API's processes (each gets every one).",
)

"""Admin reports benchmark: usage reports, the admin job listing and the reconciliation over a
seeded ledger of N jobs (default 1,000,000) across 50 keys, 3 models and 90 days.

1. A new PostgreSQL database ``fluxgate_bench_<hex>`` built by the migrations (or, with
   ``--database-url``, one seeded by an earlier run with ``--keep-db``).
2. Seeding in the database itself (``INSERT ... SELECT`` over ``generate_series``, a million
   rows a statement; the secondary indexes dropped first and built again after, foreign-key
   triggers off while it runs): 93% succeeded with a charge, 5% failed and 2% canceled at $0
   without one; 70% of the succeeded report neurons. Ids are made as the gateway makes them (the
   creation millisecond first), so they sort by ``created_at``. Then VACUUM ANALYZE.
3. The usage rollup, timed (app/billing/rollup.py, as beat runs it).
4. A gateway through the test harness (tests/harness/: API only, an admin key), and, over HTTP,
   each request timed cold (the first, on a new connection) and warm (median of 5 more):
   ``GET /v1/admin/usage`` by day, key and model over the 90 days in UTC and in Asia/Kolkata,
   ``GET /v1/admin/jobs`` (the first page, one page per filter, prompt searches, a deep cursor).
   Then, in this process, the reconciliation service over the 90 days and one day's
   mismatches, and the window's ledger totals.

    .venv/bin/python bench/admin_reports.py [--jobs 1000000] [--keep-db]
    .venv/bin/python bench/admin_reports.py --database-url postgresql://.../fluxgate_bench_x
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

if not __package__:
    # Run as ``python bench/admin_reports.py``: ``bench`` and ``tests`` are in the root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from sqlalchemy.orm import Session, sessionmaker

import app.models  # noqa: F401  # every table, for the ORM's foreign keys
from app.billing import reconciliation, rollup, usage
from app.core.db import make_engine
from app.core.ids import ID_CHARS, new_id
from app.core.migrate import upgrade_to_head
from app.core.settings import normalize_database_url
from tests.harness.claims import PG_ADMIN_URL
from tests.harness.stack import Stack

KEYS = 50
DAYS = 90
BATCH = 1_000_000
WARM_RUNS = 5
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
SUBJECTS = [
    "lighthouse", "fox", "teapot", "castle", "robot", "forest", "harbor", "violin", "glacier",
    "market", "owl", "bicycle", "temple", "desert", "orchid", "subway", "whale", "bridge",
    "lantern", "meadow", "volcano", "library", "canyon", "dragon", "garden", "comet", "village",
]  # fmt: skip
STYLES = [
    "at dusk, oil painting", "in the rain, photograph", "watercolor", "pixel art", "isometric",
    "charcoal sketch", "studio lighting", "cinematic", "ukiyo-e print", "low poly render",
    "macro shot", "by moonlight", "in fog", "pastel colors", "neon noir", "art deco poster",
]  # fmt: skip


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _b32(expression: str, chars: int) -> str:
    """SQL for ``expression`` (a bigint) in ``chars`` Crockford base32 characters, as ids."""
    digits = [
        f"substr('{ALPHABET}', ((({expression}) >> {5 * (chars - 1 - i)}) & 31)::int + 1, 1)"
        for i in range(chars)
    ]
    return " || ".join(digits)


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


JOB_COLUMNS = (
    "id, api_key_id, status, model, prompt, width, height, seed, guidance, steps, "
    "input_image_count, metadata, webhook_url, price_id, estimated_nanos, charged_nanos, "
    "input_tiles, output_tiles, upstream_neurons, attempts, error_code, error_message, "
    "created_at, started_at, completed_at"
)


def _jobs_sql(keys: list[str], prices: dict[str, int]) -> str:
    millis = "(extract(epoch FROM created) * 1000)::bigint"
    ids = f"'job_' || {_b32(millis, 10)} || {_b32('(g * 2654435761) % 1099511627776', 16)}"
    assert ID_CHARS == 26
    # Built from this file's own constants and the database's own ids only.
    sql = f"""
INSERT INTO jobs ({JOB_COLUMNS})
SELECT {ids}, key_id, status, model,
       'a ' || subject || ' ' || style || ' #' || g, width, height, g % 4294967296, NULL, steps,
       0, '{{}}'::json, NULL, price_id, estimated,
       CASE WHEN status = 'succeeded' THEN estimated ELSE 0 END,
       0, tiles,
       CASE WHEN status = 'succeeded' AND g % 10 < 7
            THEN to_char(round(estimated / 11000.0, 2), 'FM9999999990.00') END,
       1,
       CASE WHEN status = 'failed' THEN 'upstream_error' END,
       CASE WHEN status = 'failed' THEN 'Workers AI returned 3040' END,
       created, created + interval '1 second',
       CASE WHEN status <> 'canceled' THEN created + interval '3 seconds'
            ELSE created + interval '1 second' END
FROM (
    SELECT g, created, key_id, status, model, width, height, tiles, steps,
           CASE model WHEN 'flux-2-klein-4b' THEN {prices.get("flux-2-klein-4b", 0)}
                      WHEN 'flux-2-klein-9b' THEN {prices.get("flux-2-klein-9b", 0)}
                      ELSE {prices.get("flux-2-dev", 0)} END AS price_id,
           CASE model WHEN 'flux-2-klein-4b' THEN 287000::bigint * tiles
                      WHEN 'flux-2-klein-9b' THEN 15000000::bigint
                      ELSE 410000::bigint * tiles * steps END AS estimated,
           subject, style
    FROM (
        SELECT g, created, key_id, status, model, width, height, subject, style,
               ((width + 511) / 512) * ((height + 511) / 512) AS tiles,
               CASE WHEN model = 'flux-2-dev' THEN 25 ELSE 4 END AS steps
        FROM (
            SELECT g,
                   %(t0)s::timestamptz + (g - 1) * %(step_us)s * interval '1 microsecond'
                       AS created,
                   ({_array(keys)}::text[])[1 + abs(hashint8(g)) % {len(keys)}] AS key_id,
                   CASE WHEN abs(hashint8(-g)) % 100 < 93 THEN 'succeeded'
                        WHEN abs(hashint8(-g)) % 100 < 98 THEN 'failed'
                        ELSE 'canceled' END AS status,
                   CASE WHEN abs(hashint8(g + 1)) % 10 < 6 THEN 'flux-2-klein-4b'
                        WHEN abs(hashint8(g + 1)) % 10 < 9 THEN 'flux-2-klein-9b'
                        ELSE 'flux-2-dev' END AS model,
                   512 + 256 * (abs(hashint8(g + 3)) % 3) AS width,
                   512 + 256 * (abs(hashint8(g + 4)) % 2) AS height,
                   ({_array(SUBJECTS)}::text[])[1 + abs(hashint8(g + 5)) % {len(SUBJECTS)}]
                       AS subject,
                   ({_array(STYLES)}::text[])[1 + abs(hashint8(g + 6)) % {len(STYLES)}] AS style
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
        ) a
    ) b
) c
"""  # noqa: S608
    return sql.replace(" % ", " %% ")  # modulo, not a placeholder


CHARGES_SQL = """
INSERT INTO charges (job_id, api_key_id, model, price_id, amount_nanos, created_at)
SELECT id, api_key_id, model, price_id, charged_nanos, completed_at
FROM jobs WHERE status = 'succeeded' AND id >= %(lo)s AND id < %(hi)s
ORDER BY completed_at
"""

# Indexes the seeding drops and builds again (constraints stay).
KEEP = {"pk_jobs", "pk_charges", "uq_charges_job_id"}


def seed(url: str, jobs: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    upgrade_to_head(normalize_database_url(url))
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=DAYS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no FK triggers while seeding
        conn.execute("SET maintenance_work_mem = '1GB'")
        keys = [new_id("key") for _ in range(KEYS)]
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY api_keys (id, name, key_hash, display_prefix, is_admin, webhook_secret, "
                "created_at, budget_period, active_jobs) FROM STDIN"
            ) as copy,
        ):
            for number, key in enumerate(keys):
                copy.write_row(
                    (key, f"tenant-{number}", f"hash-{key}", "fgk_bench", False, "whsec_x",
                     t0, "month", 0)
                )  # fmt: skip
        prices = {
            model: price_id
            for price_id, model in conn.execute(
                "SELECT min(id), model FROM prices GROUP BY model"
            ).fetchall()
        }
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('jobs', 'charges')"
        ).fetchall()
        dropped = [(name, ddl) for name, ddl in indexes if name not in KEEP]
        for name, _ddl in dropped:
            conn.execute(f'DROP INDEX "{name}"')
        step_us = DAYS * 86_400_000_000 // jobs
        sql = _jobs_sql(keys, prices)
        for lo in range(1, jobs + 1, BATCH):
            hi = min(lo + BATCH - 1, jobs)
            conn.execute(sql, {"t0": t0, "step_us": step_us, "lo": lo, "hi": hi})
            log(f"jobs {hi:,} / {jobs:,}")
        timings["seed jobs"] = time.monotonic() - started
        bounds = [row[0] for row in conn.execute(
            "SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs) r "
            "WHERE n %% %(every)s = 1 ORDER BY id", {"every": BATCH}
        )] + ["job_zzzzzzzzzzzzzzzzzzzzzzzzzz"]  # fmt: skip
        for lo_id, hi_id in itertools.pairwise(bounds):
            conn.execute(CHARGES_SQL, {"lo": lo_id, "hi": hi_id})
        log("charges written")
        timings["seed charges"] = time.monotonic() - started - sum(timings.values())
        for name, ddl in dropped:
            log(f"building {name}")
            conn.execute(ddl)
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE charges")
        conn.execute("VACUUM ANALYZE api_keys")
        timings["indexes + vacuum analyze"] = time.monotonic() - started - sum(timings.values())
    return timings


@dataclass
class Timed:
    name: str
    cold: float
    warm: float
    note: str = ""


def time_call(name: str, call: Callable[[], Any], note: Callable[[Any], str]) -> Timed:
    began = time.perf_counter()
    first = call()
    cold = time.perf_counter() - began
    runs = []
    for _ in range(WARM_RUNS):
        began = time.perf_counter()
        call()
        runs.append(time.perf_counter() - began)
    return Timed(name, cold, statistics.median(runs), note(first))


def http_timings(api_url: str, admin_key: str, *, first_day: date, last_day: date,
                 database_url: str) -> list[Timed]:  # fmt: skip
    results: list[Timed] = []

    def timed_get(name: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=300
        ) as client:

            def call() -> httpx.Response:
                response = client.get(path, params=params)
                response.raise_for_status()
                return response

            def note(response: httpx.Response) -> str:
                body = response.json()
                return f"{len(body['data'])} rows"

            results.append(time_call(name, call, note))
            return client.get(path, params=params).json()  # type: ignore[no-any-return]

    window = {"from": first_day.isoformat(), "to": (last_day + timedelta(days=1)).isoformat()}
    for tz in ("UTC", "Asia/Kolkata"):
        for group_by in ("day", "key", "model"):
            timed_get(
                f"usage {group_by}, {DAYS} days, {tz}",
                "/v1/admin/usage",
                {**window, "group_by": group_by, "tz": tz},
            )
    first = timed_get("jobs: first page", "/v1/admin/jobs", {"limit": 20})
    some_key = first["data"][0]["key_id"]
    middle = first_day + (last_day - first_day) / 2
    engine = make_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            deep = connection.exec_driver_sql(
                "SELECT id FROM jobs ORDER BY id LIMIT 1 OFFSET (SELECT count(*) / 10 FROM jobs)"
            ).scalar_one()
            rare = connection.exec_driver_sql(
                "SELECT id, prompt FROM jobs ORDER BY id LIMIT 1 OFFSET 1000"
            ).one()
    finally:
        engine.dispose()
    for name, params in [
        ("jobs: key_id", {"key_id": some_key}),
        ("jobs: status=failed", {"status": "failed"}),
        ("jobs: status=canceled + key", {"status": "canceled", "key_id": some_key}),
        ("jobs: model=flux-2-dev", {"model": "flux-2-dev"}),
        ("jobs: from/to (one day)", {"from": middle.isoformat(),
                                     "to": (middle + timedelta(days=1)).isoformat()}),
        ("jobs: id", {"id": rare[0]}),
        ("jobs: q common word", {"q": "Lighthouse"}),
        # The style and number of one job: it, and the few whose number starts the same.
        ("jobs: q rare (a few jobs)", {"q": rare[1].split(" ", 2)[2]}),
        ("jobs: q two words", {"q": "whale in fog"}),
        ("jobs: deep cursor (90% back)", {"cursor": deep}),
    ]:  # fmt: skip
        timed_get(name, "/v1/admin/jobs", {"limit": 20, **params})
    return results


def page_timings(api_url: str, admin_key: str, *, first_day: date, last_day: date,
                 job_id: str, key_id: str) -> list[Timed]:  # fmt: skip
    """The dashboard's pages, as a browser asks for them: signed in once (the session cookie),
    each page one request (the Usage page's reconciliation line is its own, loaded after)."""
    results: list[Timed] = []
    with httpx.Client(base_url=api_url, timeout=300, headers={"Origin": api_url}) as browser:
        login = browser.post("/admin/login", data={"key": admin_key})
        if login.status_code != 303:
            raise RuntimeError(f"dashboard login: HTTP {login.status_code}")

        def page(name: str, path: str) -> None:
            def call() -> httpx.Response:
                response = browser.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status_code}")
                return response

            results.append(time_call(name, call, lambda r: f"{len(r.content) // 1024} KiB"))

        window = f"from={first_day.isoformat()}&to={(last_day + timedelta(days=1)).isoformat()}"
        page("Overview (30 days by model)", "/admin")
        page("Overview, 90 days by key", "/admin?days=90&stack=key")
        page("Usage, this month by day (default)", "/admin/usage")
        page("  its reconciliation line", "/admin/usage/reconciliation")
        page(f"Usage, {DAYS} days by day, UTC", f"/admin/usage?{window}&group_by=day")
        page(f"Usage, {DAYS} days by key, Asia/Kolkata",
             f"/admin/usage?{window}&group_by=key&tz=Asia/Kolkata")  # fmt: skip
        page(f"  its reconciliation line ({DAYS} days)",
             f"/admin/usage/reconciliation?{window}&group_by=key&tz=Asia/Kolkata")  # fmt: skip
        page(f"Usage CSV, {DAYS} days by day", f"/admin/usage.csv?{window}&group_by=day")
        page("Keys", "/admin/keys")
        page("Jobs, first page", "/admin/jobs")
        page("Jobs, one key and failed", f"/admin/jobs?key={key_id}&status=failed")
        page("Jobs, prompt search", "/admin/jobs?q=Lighthouse")
        page("Job page", f"/admin/jobs/{job_id}")
        page("Webhooks (failing)", "/admin/webhooks")
        page("Prices", "/admin/prices")
        page("Reconciliation (30 days)", "/admin/reconciliation")
        days = f"from={first_day.isoformat()}&to={last_day.isoformat()}"
        page(f"Reconciliation ({DAYS} days)", f"/admin/reconciliation?{days}")
        page("Reconciliation, one day's jobs",
             f"/admin/reconciliation?day={(last_day - timedelta(days=1)).isoformat()}")  # fmt: skip
    return results


def service_timings(database_url: str, *, first_day: date, last_day: date) -> list[Timed]:
    engine = make_engine(normalize_database_url(database_url))
    sessions = sessionmaker(bind=engine)
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    middle = first_day + (last_day - first_day) / 2
    try:

        def in_session(work: Callable[[Session], Any]) -> Callable[[], Any]:
            def call() -> Any:
                with sessions() as session:
                    return work(session)

            return call

        return [
            time_call(
                f"reconciliation, {DAYS} days",
                in_session(lambda s: reconciliation.reconcile_days(
                    s, first_day=first_day, last_day=last_day)),
                lambda days: f"{len(days)} days",
            ),
            time_call(
                "mismatched jobs of a day (over rounding)",
                in_session(lambda s: reconciliation.mismatches(
                    s, day=middle, limit=100, tolerance_nanos=55)),
                lambda rows: f"{len(rows)} rows",
            ),
            time_call(
                f"ledger totals, {DAYS} days (charges only)",
                in_session(lambda s: usage.ledger_totals(s, start=start, end=end)),
                lambda totals: f"{totals.jobs:,} jobs",
            ),
            time_call(
                f"ledger totals with tiles, {DAYS} days",
                in_session(lambda s: usage.ledger_totals(
                    s, start=start, end=end, with_tiles=True)),
                lambda totals: f"{totals.jobs:,} jobs",
            ),
        ]  # fmt: skip
    finally:
        engine.dispose()


def run_rollup(database_url: str) -> tuple[float, int]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        began = time.monotonic()
        now = datetime.now(UTC)
        rows = 0
        while True:  # a pass a week, as beat catches up
            with sessionmaker(bind=engine).begin() as session:
                result = rollup.roll_up(session, now=now)
            rows += result.rows
            if result.rolled_until == rollup.floor_hour(now - rollup.ROLLUP_GRACE):
                break
        while True:  # and the ledger's own hourly sums, as beat does after the rollup
            with sessionmaker(bind=engine).begin() as session:
                checked = rollup.check_ledger(session, now=now)
            if checked.rolled_until == rollup.floor_hour(now - rollup.LEDGER_CHECK_LAG):
                return time.monotonic() - began, rows
    finally:
        engine.dispose()


@contextlib.contextmanager
def bench_database(url: str | None, *, keep: bool) -> Iterator[tuple[str, bool]]:
    """(url, fresh): the given database, or a new one (dropped afterwards unless ``keep``)."""
    if url is not None:
        yield url, False
        return
    name = f"fluxgate_bench_{new_id('db')[-10:]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    created = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        yield created, True
    finally:
        if keep:
            log(f"database kept: {created}")
        else:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def print_table(title: str, rows: list[Timed]) -> None:
    print(f"\n{title}")
    print(f"| {'request':<42} | {'cold ms':>8} | {'warm ms':>8} | result |")
    print(f"|{'-' * 44}|{'-' * 10}:|{'-' * 10}:|--------|")
    for row in rows:
        print(f"| {row.name:<42} | {row.cold * 1000:8.0f} | {row.warm * 1000:8.0f} | {row.note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="an already seeded database (skips seeding)")
    parser.add_argument("--keep-db", action="store_true", help="keep the seeded database")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="fluxgate-bench-"))
    report: dict[str, Any] = {"jobs": args.jobs}
    try:
        with bench_database(args.database_url, keep=args.keep_db) as (url, fresh):
            if fresh:
                log(f"seeding {args.jobs:,} jobs into {url}")
                report["seed_seconds"] = seed(url, args.jobs)
                log(f"seeded: {report['seed_seconds']}")
                seconds, rows = run_rollup(url)
                report["rollup"] = {"seconds": seconds, "rows": rows}
                log(f"rollup: {rows:,} rows in {seconds:.1f}s")
            with psycopg.connect(url) as conn:
                first, last, count = conn.execute(
                    "SELECT min(created_at), max(created_at), count(*) FROM jobs"
                ).fetchone() or (None, None, 0)
            report["jobs_in_database"] = count
            first_day, last_day = first.astimezone(UTC).date(), last.astimezone(UTC).date()
            stack = Stack(log_dir, backend="postgres", database_url=url, log_level="WARNING")
            try:
                stack.start_api()
                admin_key = stack.create_key("bench-admin", "--admin")
                http = http_timings(
                    stack.api_url, admin_key, first_day=first_day, last_day=last_day,
                    database_url=url,
                )  # fmt: skip
                with psycopg.connect(url) as conn:
                    job_id, key_id = conn.execute(
                        "SELECT id, api_key_id FROM jobs WHERE status = 'succeeded'"
                        " ORDER BY id DESC LIMIT 1"
                    ).fetchone() or ("", "")
                pages = page_timings(
                    stack.api_url, admin_key, first_day=first_day, last_day=last_day,
                    job_id=job_id, key_id=key_id,
                )  # fmt: skip
            finally:
                stack.close()
            services = service_timings(url, first_day=first_day, last_day=last_day)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    report["http"] = [vars(row) for row in http]
    report["pages"] = [vars(row) for row in pages]
    report["services"] = [vars(row) for row in services]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"\n{count:,} jobs, {first_day} .. {last_day}")
    if "rollup" in report:
        seeding = ", ".join(f"{k} {v:.0f}s" for k, v in report["seed_seconds"].items())
        print(f"seeding: {seeding}; rollup: {report['rollup']['rows']:,} rows in "
              f"{report['rollup']['seconds']:.1f}s")  # fmt: skip
    print_table("Over HTTP (API process, PostgreSQL)", http)
    print_table("Dashboard pages over HTTP (signed in)", pages)
    print_table("Services, in process", services)
    return 0


if __name__ == "__main__":
    sys.exit(main())

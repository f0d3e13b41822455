"""The ``fluxgate`` command: one entry point for every role."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from app.cli.datadir import DATABASE_FILE, DEFAULT_DATA_DIR, database_url
from app.core.settings import (
    ConfigError,
    Settings,
    database_url_in_environment,
    get_settings,
    load_database_settings,
    share_with_api_processes,
    use_settings,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

NO_DATABASE = (
    "no database: set FLUXGATE_DATABASE_URL or run in the folder of a `fluxgate dev` "
    "(or pass --data-dir)"
)


def _setup_logging() -> None:
    from app.core.logs import configure

    try:
        settings = get_settings()
        log_format, level = settings.log_format, settings.log_level
    except ConfigError:
        # A command that needs the settings reports what is wrong with them.
        log_format, level = "text", "INFO"
    configure(log_format=log_format, level=level)


def _database_settings(data_dir: str | None) -> Settings:
    """The settings of a command that uses the database alone. Its database: ``--data-dir``'s
    (a ``fluxgate dev``'s state), else FLUXGATE_DATABASE_URL's, else that of the ``fluxgate
    dev`` whose state is in ./.fluxgate."""
    if data_dir is None and not database_url_in_environment():
        if not Path(DEFAULT_DATA_DIR).is_dir():
            raise ConfigError(NO_DATABASE)
        data_dir = DEFAULT_DATA_DIR
    if data_dir is None:
        return load_database_settings()
    folder = Path(data_dir).resolve()
    # SQLite would make an empty database where there is none: said instead.
    if not (folder / DATABASE_FILE).is_file():
        raise ConfigError(
            f"{folder} holds no {DATABASE_FILE}: it is not the data dir of a "
            "`fluxgate dev` that has started"
        )
    return load_database_settings(database_url=database_url(folder))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: int = 0) -> str:
    """Columns two spaces apart, under a header; the ``right`` columns after the first are
    numbers (aligned right); the last one is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    last = len(header) - 1

    def line(row: Sequence[str]) -> str:
        cells = [
            cell
            if i == last
            else cell.rjust(widths[i])
            if 1 <= i <= right
            else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [header, *rows])


def _usd(amount: str | None) -> str:
    return "-" if amount is None else f"${amount}"


def _flat(fields: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``a.b: value`` lines of a nested object, without the empty ones."""
    lines: list[tuple[str, str]] = []
    for name, value in fields.items():
        if isinstance(value, Mapping):
            lines.extend(_flat(value, f"{prefix}{name}."))
        elif value is not None and value != {}:
            lines.append((f"{prefix}{name}", str(value)))
    return lines


def _logging_is_ours(**_: object) -> None:
    """Celery's ``setup_logging`` signal: answered, so Celery leaves the logging configured
    here as it is (no handlers of its own, no stdout taken over)."""


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    from app.core.migrate import upgrade_to_head

    upgrade_to_head(settings.database_url)
    print("database is at the latest schema")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from app.cli.dev import run_dev

    return run_dev(
        port=args.port, data_dir=Path(args.data_dir), simulator_latency=args.simulator_latency
    )


def cmd_api(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.metrics_port is not None:
        settings = use_settings(settings, metrics_port=args.metrics_port)
    if args.metrics_host is not None:
        settings = use_settings(settings, metrics_host=args.metrics_host)
    with contextlib.ExitStack() as stack:
        if settings.prometheus_multiproc_dir is None:
            # A fresh directory per run: the metrics of processes that are gone do not count.
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxgate-metrics-"))
            settings = use_settings(settings, prometheus_multiproc_dir=folder)
        # Before uvicorn starts the app, which makes the metrics.
        share_with_api_processes(settings)
        if settings.metrics_port is not None:
            _serve_api_metrics(settings)
        _serve_api(args, settings)
    return 0


def _serve_api_metrics(settings: Settings) -> None:
    """Every API process's metrics, and the backlog, on the metrics port, from this process
    (uvicorn's supervisor when there are several)."""
    from app.http.metrics import api_registry, serve_metrics
    from app.jobs.backlog import BacklogCollector

    assert settings.metrics_port is not None
    serve_metrics(
        host=settings.metrics_host,
        port=settings.metrics_port,
        registry=api_registry(settings, [BacklogCollector()]),
    )


def _serve_api(args: argparse.Namespace, settings: Settings) -> None:
    import socket

    import uvicorn

    from app.core import tracing
    from app.http.limits import LimitedHttpToolsProtocol
    from app.http.serve import log_config, serve

    # Each API process sets tracing up in create_app; a missing extra is said here, in one line.
    tracing.check_installed(settings)
    serve(
        uvicorn.Config(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            log_config=log_config(log_format=settings.log_format, level=settings.log_level),
            proxy_headers=True,
            timeout_graceful_shutdown=30,
            http=LimitedHttpToolsProtocol,
        ),
        # fluxgate dev binds the port itself and hands the socket over.
        sock=None if args.fd is None else socket.socket(fileno=args.fd),
    )


# The worker's tasks, loaded by Celery by name in worker processes only: nothing in app/
# imports the worker edge.
WORKER_TASKS = "worker.tasks"


def _celery_quiet(settings: Settings) -> list[str]:
    """Celery's start-up banner is printed, not logged: left out of JSON logs."""
    return ["--quiet"] if settings.log_format == "json" else []


def _celery_notices_logged() -> None:
    """Celery writes its shutdown notices ("worker: Warm shutdown (MainProcess)") straight to
    the standard output, past logging and whatever --quiet says: in JSON logs they are logged
    instead, so that every line stays one JSON object."""
    from celery.apps import worker

    notices = logging.getLogger("celery.apps.worker")
    worker.safe_say = lambda message, *_: notices.info(message)


def cmd_worker(args: argparse.Namespace) -> int:
    from celery.signals import setup_logging

    from app import backends
    from app.core import tracing
    from app.core.queue import QUEUES, celery_app
    from app.http.metrics import serve_metrics

    settings = get_settings()
    if args.concurrency is not None:
        settings = use_settings(settings, worker_concurrency=args.concurrency)
    names = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUES]
    if unknown or not names:
        raise ConfigError(f"--queues takes a comma-separated list of {', '.join(QUEUES)}")
    if "jobs" in names:
        settings.require_upstream()

    # The pool is threads: this process runs every task, so it is set up once, here.
    tracing.setup(settings, role="worker")
    backends.connect(settings)
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if port is not None:
        serve_metrics(host=args.metrics_host or settings.metrics_host, port=port)
    if args.heartbeat_file is not None:
        from app.cli import heartbeat

        heartbeat.add_to_worker(celery_app, Path(args.heartbeat_file))
    celery_app.conf.include = [WORKER_TASKS]
    setup_logging.connect(_logging_is_ours)
    if settings.log_format == "json":
        _celery_notices_logged()
    celery_app.worker_main(
        [
            *_celery_quiet(settings),
            "worker",
            "--pool=threads",
            f"--concurrency={settings.worker_concurrency}",
            f"--queues={','.join(QUEUES[name] for name in names)}",
            f"--hostname=fluxgate-{os.getpid()}@%h",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from celery.signals import setup_logging

    from app import backends
    from app.cli.heartbeat import HeartbeatScheduler
    from app.core import tracing
    from app.core.queue import celery_app

    settings = get_settings()
    tracing.setup(settings, role="beat")
    backends.connect(settings)
    setup_logging.connect(_logging_is_ours)
    if args.heartbeat_file is not None:
        HeartbeatScheduler.heartbeat_file = Path(args.heartbeat_file)
    # The schedule is fixed intervals: nothing to persist between restarts (Celery's default
    # scheduler keeps nothing, and this one only adds the heartbeat).
    celery_app.start(
        [
            *_celery_quiet(settings),
            "beat",
            "--scheduler=app.cli.heartbeat:HeartbeatScheduler",
            f"--loglevel={settings.log_level}",
        ]
    )
    return 0


def cmd_simulate_upstream(args: argparse.Namespace) -> int:
    from app.simulator.__main__ import run

    run(args.parser, args)
    return 0


# The flag that sets each field of the key schemas, for error messages.
_KEY_FLAGS = {
    "name": "--name",
    "budget_usd": "--budget-usd",
    "budget_period": "--budget-period",
    "rate_limit_per_minute": "--rate-limit",
    "max_concurrent_jobs": "--max-concurrent",
}


def _key_fields(model: type[ModelT], fields: dict[str, object]) -> ModelT:
    """The command line's key fields checked by the API's own schema (the same rules and
    maximums); the first problem as one line naming its flag."""
    from pydantic import ValidationError

    try:
        return model.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{_KEY_FLAGS.get(field, field)}: {message}") from None


def cmd_keys_create(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.keys.schemas import KeyCreate
    from app.keys.service import create_key_as

    get_settings()
    fields = {
        "name": args.name,
        "admin": args.admin,
        "budget_usd": args.budget_usd,
        "budget_period": args.budget_period,
        "rate_limit_per_minute": args.rate_limit,
        "max_concurrent_jobs": args.max_concurrent,
    }
    spec = _key_fields(KeyCreate, fields)
    with session_scope() as session:
        created = create_key_as(session, spec=spec)
        key_id, secret = created.api_key.id, created.api_key.webhook_secret
    if args.json:
        print(json.dumps({"id": key_id, "key": created.key, "webhook_secret": secret}))
    else:
        print(f"id:             {key_id}")
        print(f"key:            {created.key}")
        print(f"webhook secret: {secret}")
        print("Store both now: they are not shown again.")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from app.billing import usage
    from app.core.db import session_scope
    from app.core.money import format_usd
    from app.core.orm import utcnow
    from app.keys.service import list_keys, to_key_out

    with session_scope() as session:
        # What each key was charged this calendar month (UTC), as the usage report counts it.
        start, end = usage.default_window(utcnow())
        spent = {
            row.group: row.charged_nanos
            for row in usage.usage(session, start=start, end=end, group_by="key")
        }
        rows = []
        for key in list_keys(session):
            shown = to_key_out(session, key)
            rows.append(
                {
                    "id": key.id,
                    "name": key.name,
                    "prefix": key.display_prefix,
                    "admin": key.is_admin,
                    "budget_usd": shown.budget_usd,
                    "budget_period": key.budget_period,
                    "budget_used_usd": shown.budget_used_usd,
                    "spent_this_month_usd": format_usd(spent.get(key.id, 0)),
                    "revoked": key.revoked_at is not None,
                }
            )
    if args.json:
        print(json.dumps(rows))
        return 0
    header = ["ID", "PREFIX", "STATE", "SPENT THIS MONTH", "BUDGET", "BUDGET USED", "NAME"]
    lines = [
        [
            str(row["id"]),
            f"{row['prefix']}...",
            "revoked" if row["revoked"] else ("admin" if row["admin"] else "key"),
            _usd(str(row["spent_this_month_usd"])),
            f"${row['budget_usd']}/{row['budget_period']}" if row["budget_usd"] else "-",
            _usd(str(row["budget_used_usd"])) if row["budget_usd"] else "-",
            str(row["name"]),
        ]
        for row in rows
    ]
    print(_table(header, lines))
    return 0


def cmd_keys_update(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.keys.schemas import KeyUpdate
    from app.keys.service import update_key

    get_settings()
    given = {
        "name": args.name,
        "budget_usd": args.budget_usd,
        "budget_period": args.budget_period,
        "rate_limit_per_minute": args.rate_limit,
        "max_concurrent_jobs": args.max_concurrent,
    }
    # "none" removes a budget or limit, as null does over the API; the limits are numbers.
    numbers = ("rate_limit_per_minute", "max_concurrent_jobs")
    fields: dict[str, object] = {
        name: None
        if value == "none"
        else int(value)
        if name in numbers and value.isdigit()
        else value
        for name, value in given.items()
        if value is not None
    }
    changes = _key_fields(KeyUpdate, fields).changes()
    with session_scope() as session:
        update_key(session, key_id=args.id, changes=changes)
    print(f"updated {args.id}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.keys.service import revoke_key

    get_settings()
    with session_scope() as session:
        revoke_key(session, key_id=args.id)
    print(f"revoked {args.id}")
    return 0


def cmd_keys_rotate_webhook_secret(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.keys.service import rotate_webhook_secret

    grace = args.grace_seconds
    if grace is None:
        grace = get_settings().webhook_secret_grace_seconds
    with session_scope() as session:
        api_key = rotate_webhook_secret(session, key_id=args.id, grace_seconds=grace)
        secret, expires = api_key.webhook_secret, api_key.previous_webhook_secret_expires_at
    if args.json:
        print(json.dumps({"id": args.id, "webhook_secret": secret}))
    else:
        print(f"webhook secret: {secret}")
        print(f"the old secret also signs until {expires:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def cmd_prices_list(_: argparse.Namespace) -> int:
    from app.billing.schemas import price_out
    from app.billing.service import list_prices
    from app.core.db import session_scope

    get_settings()
    with session_scope() as session:
        rows = [price_out(price).model_dump(mode="json") for price in list_prices(session)]
    print(json.dumps(rows, indent=2))
    return 0


def cmd_prices_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.billing.schemas import PriceCreate, price_out
    from app.billing.service import add_price
    from app.core.db import session_scope

    get_settings()
    try:
        body = PriceCreate(
            model=args.model,
            effective_from=args.effective_from,
            output_unit=args.output_unit,
            input_unit=args.input_unit,
            per_step=args.per_step,
            output_unit_usd=args.output_usd,
            output_first_unit_usd=args.output_first_usd,
            input_unit_usd=args.input_usd,
        )
        with session_scope() as session:
            created = price_out(add_price(session, price=body.to_price()))
    except ValidationError as error:
        first = error.errors()[0]
        print(f"fluxgate: {first['loc'][0]}: {first['msg']}", file=sys.stderr)
        return 2
    print(json.dumps(created.model_dump(mode="json")))
    return 0


HEARTBEAT_HELP = (
    "touch this file every 10 s while consuming (beat: while scheduling), for a healthcheck "
    "that checks its age (default: none)"
)


def cmd_usage(args: argparse.Namespace) -> int:
    from app.billing import usage
    from app.billing.schemas import usage_out
    from app.core.db import session_scope
    from app.core.orm import utcnow

    span = usage.window(start=args.start, end=args.to, tz=args.tz, now=utcnow())
    with session_scope() as session:
        rows = usage.usage(
            session,
            start=span.start,
            end=span.end,
            group_by=args.group_by,
            tz=span.tz,
            api_key_id=args.key,
        )
    # The report /v1/admin/usage answers, made by the same service.
    report = usage_out(rows, start=span.start, end=span.end, group_by=args.group_by, tz=span.tz.key)
    if args.json:
        print(json.dumps(report.model_dump(mode="json")))
        return 0
    start, end = (at.astimezone(span.tz).isoformat() for at in (span.start, span.end))
    who = f"key {args.key}" if args.key else "every key"
    print(f"Usage of {who} from {start} to {end}, by {args.group_by}")
    header = [args.group_by.upper(), "JOBS", "OUTPUT TILES", "INPUT TILES", "CHARGED USD"]
    lines = [
        [row.group, str(row.jobs), str(row.output_tiles), str(row.input_tiles), row.charged_usd]
        for row in [*report.data, report.total]
    ]
    print(_table(header, lines, right=4))
    return 0


# app/billing/usage.py's GROUP_BYS, without loading the reports for every command's parser.
USAGE_GROUP_BYS = ("hour", "day", "model", "key")

# The flags of the job filters, by the parameter names their errors carry.
_JOB_FLAGS = {"q": "--prompt", "from": "--from", "to": "--to", "status": "--status"}


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.core.errors import InvalidParameter
    from app.jobs.schemas import AdminJobList
    from app.jobs.service import JobFilters, list_all_jobs, to_admin_job_out

    try:
        filters = JobFilters.from_query(
            key_id=args.key,
            status=args.status,
            model=args.model,
            start=args.start,
            end=args.to,
            job_id=None,
            prompt=args.prompt,
        )
        with session_scope() as session:
            jobs, next_cursor = list_all_jobs(
                session, filters=filters, limit=args.limit, cursor=args.cursor
            )
            page = AdminJobList(
                data=to_admin_job_out(session, jobs, public_url=get_settings().public_url),
                next_cursor=next_cursor,
            )
    except InvalidParameter as error:
        # "q must be 3..200 characters": said of the flag instead.
        param = error.param or ""
        flag = _JOB_FLAGS.get(param, f"--{param}")
        raise ConfigError(f"{flag} {error.message.removeprefix(param + ' ')}") from None
    if args.json:
        print(json.dumps(page.model_dump(mode="json")))
        return 0
    header = ["ID", "STATUS", "MODEL", "KEY", "CREATED (UTC)", "COST USD", "PROMPT"]
    lines = [
        [
            job.id,
            job.status,
            job.model,
            job.key_id,
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
            job.cost.charged or f"~{job.cost.estimated}",
            job.params.prompt if len(job.params.prompt) <= 40 else job.params.prompt[:39] + "…",
        ]
        for job in page.data
    ]
    print(_table(header, lines) if lines else "no jobs")
    if next_cursor is not None:
        print(f"more: --cursor {next_cursor}")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from app.core.db import session_scope
    from app.jobs.service import find_job, to_admin_job_out

    with session_scope() as session:
        [job] = to_admin_job_out(
            session, [find_job(session, job_id=args.id)], public_url=get_settings().public_url
        )
    shown = job.model_dump(mode="json")
    if args.json:
        print(json.dumps(shown))
        return 0
    lines = _flat(shown)
    width = max(len(name) for name, _ in lines) + 1
    for name, value in lines:
        print(f"{name + ':':{width}} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxgate",
        description="A REST gateway with a job queue in front of FLUX.2 on Workers AI.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The commands that use the database alone: no broker asked for, and a `fluxgate dev`'s
    # state found in its folder.
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--data-dir",
        default=None,
        help="use the database of the `fluxgate dev` whose state is here (default: "
        f"FLUXGATE_DATABASE_URL, else ./{DEFAULT_DATA_DIR} if it exists)",
    )
    database.set_defaults(database_only=True)

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        *,
        group: Any = commands,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, parents=list(parents)
        )
        sub.set_defaults(handler=handler)
        return sub

    dev = add(
        "dev",
        cmd_dev,
        "Run the whole gateway on this machine with nothing else installed "
        "(SQLite, an embedded broker, the simulator unless Cloudflare credentials are set)",
    )
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where all state lives")
    dev.add_argument(
        "--simulator-latency", type=float, default=1.0, help="seconds per simulated image"
    )

    add(
        "migrate",
        cmd_migrate,
        "Upgrade the database schema to the latest migration",
        parents=[database],
    )

    api = add("api", cmd_api, "Run the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    api.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the metrics on this port, and not on the API's (default: "
        "FLUXGATE_METRICS_PORT, else /metrics on the API's port)",
    )
    api.add_argument(
        "--metrics-host",
        default=None,
        help="the address the metrics port listens on (default: FLUXGATE_METRICS_HOST, 127.0.0.1)",
    )
    # How `fluxgate dev` hands over the port it bound (and so knows who answers on it).
    api.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)

    worker = add("worker", cmd_worker, "Run a worker that forwards jobs to Workers AI")
    worker.add_argument(
        "--concurrency", type=int, default=None, help="tasks in flight (default 64)"
    )
    worker.add_argument(
        "--queues",
        default="jobs,webhooks,maintenance",
        help="what to consume: jobs, webhooks, maintenance (default all; run webhooks in a "
        "worker of its own so slow receivers never hold up image jobs)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this worker's Prometheus metrics on this port (default: FLUXGATE_METRICS_PORT, "
        "else off)",
    )
    worker.add_argument(
        "--metrics-host",
        default=None,
        help="the address the metrics port listens on (default: FLUXGATE_METRICS_HOST, "
        "127.0.0.1; 0.0.0.0 inside a container network)",
    )
    worker.add_argument("--heartbeat-file", default=None, help=HEARTBEAT_HELP)

    beat = add(
        "beat",
        cmd_beat,
        "Run the periodic work: the sweeper that re-sends stuck or lost jobs, the usage "
        "rollup, image retention and the purge of what has expired",
    )
    beat.add_argument("--heartbeat-file", default=None, help=HEARTBEAT_HELP)

    from app.simulator.__main__ import add_arguments as add_simulator_arguments

    sim = add(
        "simulate-upstream",
        cmd_simulate_upstream,
        "Run the Workers AI simulator (for development, tests and benchmarks)",
    )
    add_simulator_arguments(sim)
    sim.set_defaults(parser=sim)

    keys = commands.add_parser("keys", help="Manage API keys", description="Manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = key_commands.add_parser(
        "create",
        help="Create an API key",
        description="Create an API key; shown once.",
        parents=[database],
    )
    create.set_defaults(handler=cmd_keys_create)
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may manage keys and read all usage")
    create.add_argument(
        "--budget-usd", default=None, help='spending limit in USD, e.g. "25" (default: none)'
    )
    create.add_argument(
        "--budget-period", choices=["month", "total"], default="month", help="default: month"
    )
    create.add_argument(
        "--rate-limit", type=int, default=None, metavar="PER_MIN", help="job submissions a minute"
    )
    create.add_argument(
        "--max-concurrent", type=int, default=None, help="jobs queued or running at once"
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")

    listing = key_commands.add_parser(
        "list",
        help="List API keys",
        description="List API keys",
        parents=[database],
    )
    listing.set_defaults(handler=cmd_keys_list)
    listing.add_argument("--json", action="store_true", help="print a JSON list")

    update = key_commands.add_parser(
        "update",
        help="Change a key's name, budget or limits",
        description="Change a key's name, budget or limits; 'none' removes a budget or limit.",
        parents=[database],
    )
    update.set_defaults(handler=cmd_keys_update)
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--budget-usd", help='e.g. "25", or none')
    update.add_argument("--budget-period", choices=["month", "total"])
    update.add_argument("--rate-limit", metavar="PER_MIN", help="submissions a minute, or none")
    update.add_argument("--max-concurrent", help="jobs queued or running at once, or none")

    revoke = key_commands.add_parser(
        "revoke",
        help="Revoke an API key",
        description="Revoke an API key (by id)",
        parents=[database],
    )
    revoke.set_defaults(handler=cmd_keys_revoke)
    revoke.add_argument("id")

    rotate = key_commands.add_parser(
        "rotate-webhook-secret",
        help="Give a key a new webhook secret",
        description="Give a key a new webhook secret (printed once); deliveries are signed "
        "with the old one too during the grace period",
        parents=[database],
    )
    rotate.set_defaults(handler=cmd_keys_rotate_webhook_secret)
    rotate.add_argument("id")
    rotate.add_argument("--grace-seconds", type=int, default=None, help="default 24 h")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")

    prices = commands.add_parser(
        "prices", help="Show or add prices", description="Prices are data with effective dates"
    )
    price_commands = prices.add_subparsers(dest="prices_command", required=True, metavar="COMMAND")
    price_list = price_commands.add_parser(
        "list", help="Every price, past and future", parents=[database]
    )
    price_list.set_defaults(handler=cmd_prices_list)
    price_add = price_commands.add_parser(
        "add",
        help="Add a price from a time on",
        description="Jobs submitted before --effective-from keep the price they were given.",
        parents=[database],
    )
    price_add.set_defaults(handler=cmd_prices_add)
    price_add.add_argument("--model", required=True)
    price_add.add_argument("--effective-from", required=True, help="e.g. 2026-12-01T00:00:00Z")
    price_add.add_argument("--output-usd", required=True, help="per output unit")
    price_add.add_argument("--output-first-usd", default=None, help="the first output unit")
    price_add.add_argument("--input-usd", required=True, help="per input unit")
    price_add.add_argument("--output-unit", choices=["tile", "megapixel"], default="tile")
    price_add.add_argument("--input-unit", choices=["tile", "megapixel"], default="tile")
    price_add.add_argument("--per-step", action="store_true", help="multiply by the steps")

    usage = add(
        "usage",
        cmd_usage,
        "Every key's charged jobs, tiles and USD per day, hour, model or key (what "
        "/v1/admin/usage reports)",
        parents=[database],
    )
    usage.add_argument(
        "--from",
        dest="start",
        metavar="FROM",
        help="a date (midnight in --tz) or ISO time; default: this month",
    )
    usage.add_argument("--to", help="a date or ISO time, exclusive; default: now")
    usage.add_argument("--group-by", choices=USAGE_GROUP_BYS, default="day", help="default: day")
    usage.add_argument("--key", metavar="KEY_ID", help="only this key")
    usage.add_argument("--tz", help="IANA time zone of days and hours, e.g. Europe/Berlin")
    usage.add_argument("--json", action="store_true", help="print the report as the API does")

    jobs = commands.add_parser(
        "jobs", help="Look at every key's jobs", description="Look at every key's jobs"
    )
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    job_list = add(
        "list",
        cmd_jobs_list,
        "Every key's jobs, newest first, filtered",
        group=job_commands,
        parents=[database],
    )
    job_list.add_argument("--key", metavar="KEY_ID", help="only this key's jobs")
    job_list.add_argument(
        "--status", choices=["queued", "running", "succeeded", "failed", "canceled"]
    )
    job_list.add_argument("--model", help="e.g. flux-2-klein-4b")
    job_list.add_argument(
        "--from", dest="start", metavar="FROM", help="created at or after: a date (UTC) or ISO time"
    )
    job_list.add_argument("--to", help="created before: a date (UTC) or ISO time")
    job_list.add_argument("--prompt", help="text the prompt contains (any case), 3..200 chars")
    job_list.add_argument("--limit", type=int, default=20, help="1..100 (default 20)")
    job_list.add_argument("--cursor", help="the cursor the previous page printed")
    job_list.add_argument("--json", action="store_true", help="print the page as the API does")
    job_show = add(
        "show",
        cmd_jobs_show,
        "One job, any key's: everything the API shows of it, and its key",
        group=job_commands,
        parents=[database],
    )
    job_show.add_argument("id")
    job_show.add_argument("--json", action="store_true", help="print the job as the API does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.core.errors import FluxgateError

    try:
        if getattr(args, "database_only", False):
            use_settings(_database_settings(args.data_dir))
        _setup_logging()
        return int(args.handler(args))
    except ConfigError as error:
        print(f"fluxgate: {error}", file=sys.stderr)
        return 2
    except FluxgateError as error:  # e.g. no such key, a price that already exists
        print(f"fluxgate: {error.message}", file=sys.stderr)
        return 1

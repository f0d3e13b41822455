"""The ``fluxgate`` command: its parser and entry point. The commands are in app/cli/roles.py
(the processes: api, worker, beat, migrate, dev, the simulator) and app/cli/admin.py (keys,
prices, usage and jobs, for operators at a terminal)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from app.cli.admin import (
    USAGE_GROUP_BYS,
    cmd_jobs_list,
    cmd_jobs_show,
    cmd_keys_create,
    cmd_keys_list,
    cmd_keys_revoke,
    cmd_keys_rotate_webhook_secret,
    cmd_keys_update,
    cmd_prices_add,
    cmd_prices_list,
    cmd_usage,
    database_settings,
)
from app.cli.datadir import DEFAULT_DATA_DIR
from app.cli.roles import (
    HEARTBEAT_HELP,
    cmd_api,
    cmd_beat,
    cmd_dev,
    cmd_migrate,
    cmd_simulate_upstream,
    cmd_worker,
)
from app.core.settings import (
    ConfigError,
    get_settings,
    use_settings,
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
    api.add_argument(
        "--workers",
        type=int,
        default=None,
        help="uvicorn processes (default: FLUXGATE_API_WORKERS, else one per core)",
    )
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
        help="serve this worker's Prometheus metrics on this port (default: off)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics port listens on (0.0.0.0 inside a container network)",
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
            use_settings(database_settings(args.data_dir))
        _setup_logging()
        return int(args.handler(args))
    except ConfigError as error:
        print(f"fluxgate: {error}", file=sys.stderr)
        return 2
    except FluxgateError as error:  # e.g. no such key, a price that already exists
        print(f"fluxgate: {error.message}", file=sys.stderr)
        return 1

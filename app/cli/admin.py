"""The commands for operators at a terminal: keys, prices, usage and jobs. They use the
database alone (no broker), found through FLUXGATE_DATABASE_URL or a ``fluxgate dev``'s data
dir, and go through the same services and schemas as the API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
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
)

ModelT = TypeVar("ModelT", bound=BaseModel)

NO_DATABASE = (
    "no database: set FLUXGATE_DATABASE_URL or run in the folder of a `fluxgate dev` "
    "(or pass --data-dir)"
)


def database_settings(data_dir: str | None) -> Settings:
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
    from app.keys.service import list_keys, to_keys_out

    with session_scope() as session:
        # What each key was charged this calendar month (UTC), as the usage report counts it.
        start, end = usage.default_window(utcnow())
        spent = {
            row.group: row.charged_nanos
            for row in usage.usage(session, start=start, end=end, group_by="key")
        }
        rows = []
        keys = list_keys(session)
        for key, shown in zip(keys, to_keys_out(session, keys), strict=True):
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

"""The commands that run Fluxgate's processes: migrate, api, worker, beat, dev and the
upstream simulator (the composition root: it names the worker's tasks to Celery, so nothing in
app/ imports worker/)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from app.core.settings import (
    ConfigError,
    Settings,
    get_settings,
    share_with_api_processes,
    use_settings,
)


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
    if args.workers is not None:
        settings = use_settings(settings, api_workers=args.workers)
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
            workers=settings.api_workers,
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
    if args.metrics_port is not None:
        serve_metrics(host=args.metrics_host, port=args.metrics_port)
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


HEARTBEAT_HELP = (
    "touch this file every 10 s while consuming (beat: while scheduling), for a healthcheck "
    "that checks its age (default: none)"
)

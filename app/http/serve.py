"""Serving an ASGI app with uvicorn, for the API and the simulator.

The socket is bound before anything else starts, so a taken port stops the role at once with
one line and a non-zero exit (uvicorn would log the error after starting the app, and then
wait on it).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.core.logs import LogFormat, loggable_path, logging_config
from app.core.settings import ConfigError


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (listening is left to uvicorn); ConfigError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)  # uvicorn's worker processes serve it too
    return sock


def serve(config: uvicorn.Config, *, sock: socket.socket | None = None) -> None:
    """Run ``config`` on a socket bound first (``sock``: one bound by the parent process, as
    ``fluxgate dev`` hands its API), in one process or ``config.workers``."""
    if sock is None:
        sock = listen(config.host, config.port)
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


class AccessFields(logging.Filter):
    """uvicorn's access log lines without query strings (they can hold what must not be
    logged: the text of a prompt search, a job id being looked for), and with the method,
    path and status as fields of their own."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            if isinstance(path, str):
                path = loggable_path(path)
                record.args = (client, method, path, version, status)
            record.method, record.path, record.status = method, path, status
        return True


def log_config(*, log_format: LogFormat, level: str) -> dict[str, Any]:
    """uvicorn's logging configuration (applied in every worker process too): the roles' own
    (app/core/logs.py), uvicorn's loggers written the same way, its access log through
    :class:`AccessFields`."""
    config = logging_config(log_format=log_format, level=level)
    config["filters"]["access_fields"] = {"()": AccessFields}
    config["handlers"]["access"] = {
        **config["handlers"]["default"],
        "stream": "ext://sys.stdout",
        # In this order: the context is added to the fields the access filter set.
        "filters": ["access_fields", "context"],
    }
    config["loggers"].update(
        {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        }
    )
    return config

"""The ``fluxgate`` command: the composition root of every role (API, worker, beat, dev)."""

from app.cli.commands import main

__all__ = ["main"]

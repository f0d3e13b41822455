"""Where a ``fluxgate dev`` keeps its state, for it and for the commands run beside it."""

from __future__ import annotations

from pathlib import Path

DEFAULT_DATA_DIR = ".fluxgate"
DATABASE_FILE = "fluxgate.db"


def database_url(data_dir: Path) -> str:
    """The SQLite database of the ``fluxgate dev`` whose state is in ``data_dir``."""
    return f"sqlite:///{data_dir / DATABASE_FILE}"

"""Print the package's requirements from pyproject.toml, one a line: its dependencies and those
of the extras named (comma-separated, e.g. ``otel``).

The Docker image installs these in a layer of their own, before it copies the code, so a change
to the code does not reinstall them: ``python image_requirements.py "$EXTRAS"``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).with_name("pyproject.toml")


def requirements(project: dict[str, Any], extras: str) -> list[str]:
    found = list(project["dependencies"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    for extra in (name.strip() for name in extras.split(",")):
        if not extra:
            continue
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in pyproject.toml (there are {sorted(optional)})")
        found += optional[extra]
    return found


def main() -> None:
    # Beside this file in the image's build stage; the repository's own, run from scripts/.
    path = PYPROJECT if PYPROJECT.exists() else Path(__file__).parent.parent / "pyproject.toml"
    project = tomllib.loads(path.read_text())["project"]
    print("\n".join(requirements(project, sys.argv[1] if len(sys.argv) > 1 else "")))


if __name__ == "__main__":
    main()

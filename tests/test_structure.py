"""The layout's rules, checked on the source: which package may import which, and where the
few things that must have one home (the broker, the environment, transactions) live."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("billing", "jobs", "keys", "openai_compat", "upstream", "webhooks")


def modules(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(), filename=str(path))


def imported(tree: ast.Module) -> Iterator[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def attribute_calls(tree: ast.Module, name: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
    ]


def test_app_never_imports_the_worker() -> None:
    found = [
        f"{path}: {name}"
        for path, tree in modules("app")
        for name in imported(tree)
        if name == "worker" or name.startswith("worker.")
    ]
    assert found == []


@pytest.mark.parametrize("package", ["core", "http"])
def test_plumbing_imports_no_domain(package: str) -> None:
    files = list(modules(f"app/{package}"))
    assert len(files) >= 5
    # The one exception: the session factory registers every table (app/models.py).
    found = [
        f"{path}: {name}"
        for path, tree in files
        for name in imported(tree)
        if name.split(".")[:2] in (["app", domain] for domain in DOMAINS)
        or (name.startswith("app.") and name.split(".")[1] in ("backends", "main", "cli"))
    ]
    assert found == []


def test_only_the_broker_port_sends_task_messages() -> None:
    senders = {
        path
        for path, tree in modules("app", "worker")
        if attribute_calls(tree, "send_task") or attribute_calls(tree, "apply_async")
    }
    assert senders == {"app/core/queue.py"}
    # And only the outbox calls the port's senders.
    callers = {
        path
        for path, tree in modules("app", "worker")
        if attribute_calls(tree, "send_forward") or attribute_calls(tree, "send_delivery")
    }
    assert callers == {"app/core/outbox.py"}


def test_only_the_settings_read_the_environment() -> None:
    readers = {
        path
        for path, tree in modules("app", "worker")
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
        or (isinstance(node, ast.Name) and node.id in ("environ", "getenv"))
    }
    assert readers == {"app/core/settings.py"}


def test_routes_hold_no_transaction_calls_and_import_no_other_routes() -> None:
    route_modules = {path: tree for path, tree in modules("app") if path.endswith("routes.py")}
    assert len(route_modules) >= 5
    for path, tree in route_modules.items():
        assert attribute_calls(tree, "commit") == [], path
        assert attribute_calls(tree, "rollback") == [], path
        others = [name for name in imported(tree) if name.endswith(".routes")]
        assert others == [], path


def test_redis_or_local_is_decided_in_one_module() -> None:
    deciders = {
        path
        for path, tree in modules("app", "worker")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("redis_url", "broker_folder")
    }
    assert deciders == {"app/backends.py", "app/core/settings.py"}

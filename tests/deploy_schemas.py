"""The vendored JSON schemas (tests/schemas/, recorded in its manifest.json): validators for the
compose file and for Kubernetes objects, offline."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMAS = Path(__file__).parent / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec" / "compose-spec.json"
KUBERNETES_SCHEMAS = SCHEMAS / "kubernetes-v1.33.0-strict"


def compose_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def kubernetes_schema_file(document: dict[str, Any]) -> Path:
    """The schema of a kind, named as the schemas are: ``deployment-apps-v1.json``."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
    return KUBERNETES_SCHEMAS / f"{document['kind'].lower()}-{group_version}.json"


@cache
def _definitions() -> Resource[Any]:
    return Resource.from_contents(
        json.loads((KUBERNETES_SCHEMAS / "_definitions.json").read_text())
    )


def kubernetes_errors(document: dict[str, Any]) -> list[str]:
    """What the strict schema of the document's kind finds wrong with it (no unknown field)."""
    schema = json.loads(kubernetes_schema_file(document).read_text())
    registry: Registry[Any] = Resource.from_contents(schema) @ (_definitions() @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'.'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]

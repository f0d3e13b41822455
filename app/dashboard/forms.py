"""HTML form fields to the API's own request schemas, so a form is checked exactly as the same
change through the API would be (the schemas are strict: "5" is not a number in JSON)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.core.errors import InvalidParameter
from app.core.text import text_problem

Schema = TypeVar("Schema", bound=BaseModel)


def to_schema(
    schema: type[Schema],
    form: Mapping[str, Any],
    *,
    fields: Iterable[str],
    integers: Iterable[str] = (),
    flags: Iterable[str] = (),
    blank_is_null: Iterable[str] = (),
) -> Schema:
    """``fields`` as sent (text), ``integers`` parsed, ``flags`` true when present (checkboxes);
    a blank field in ``blank_is_null`` means null (remove), any other blank field is left out."""
    integers, flags, blank_is_null = set(integers), set(flags), set(blank_is_null)
    data: dict[str, Any] = {}
    for name in fields:
        raw = form.get(name)
        if name in flags:
            data[name] = raw is not None
            continue
        if not isinstance(raw, str):
            continue
        value = raw.strip()
        problem = text_problem(value)
        if problem is not None:
            raise InvalidParameter(f"{name} {problem}", param=name)
        if value == "":
            if name in blank_is_null:
                data[name] = None
            continue
        if name in integers:
            try:
                data[name] = int(value)
            except ValueError:
                raise InvalidParameter(f"{name}: must be a whole number", param=name) from None
        else:
            data[name] = value
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "form"
        detail = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidParameter(f"{name}: {detail}", param=name) from None

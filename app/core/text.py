"""What a client may send as text and as JSON, checked where it enters, before any write.

Text must be valid Unicode without NUL or lone surrogates: PostgreSQL refuses NUL, and a lone
surrogate can be neither stored as UTF-8 nor sent back. JSON is read strictly and within bounds
(:func:`parse_json`), for every body, whichever route reads it.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator

from app.core.errors import FluxgateError, InvalidParameter


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be taken as text, or ``None`` when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (it contains a lone surrogate)"
    return None


def _checked(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A str field that holds to the rule wherever its model is validated (HTTP, CLI).
Text = Annotated[str, AfterValidator(_checked)]


# ---- JSON bodies -------------------------------------------------------------------------

# Bounds that every JSON body meets before it is turned into objects: nesting, and the number
# of values (counted cheaply as separators, so 64 MiB of "[[],[],...]" is refused before it
# becomes millions of lists). A job body has a few dozen; prompts and metadata add a few
# thousand commas at most.
MAX_JSON_DEPTH = 32
MAX_JSON_SEPARATORS = 100_000


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would become infinity
        raise ValueError(f"{text} is out of range")
    return value


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON from a client: UTF-8, no duplicate keys, no NaN or Infinity, bounded depth
    and size, and every string (keys too) held to :func:`text_problem`. Raises the contract's
    errors: 400 ``invalid_json`` for the document, 422 naming the field for its content."""
    separators = raw.count(b",") if isinstance(raw, bytes) else raw.count(",")
    if separators > MAX_JSON_SEPARATORS:
        raise FluxgateError(
            f"the JSON body has more than {MAX_JSON_SEPARATORS} values", code="invalid_json"
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except _DuplicateKey as duplicate:
        raise InvalidParameter(
            f"{duplicate.key} is given more than once",
            code="duplicate_parameter",
            param=duplicate.key,
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FluxgateError("the body is not valid JSON (UTF-8)", code="invalid_json") from None
    _check_values(data)
    return data


def _too_deep() -> FluxgateError:
    return FluxgateError(
        f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
    )


def _check_values(data: Any) -> None:
    """Depth and text of every value, without recursion; ``param`` is the top-level field."""
    stack: list[tuple[Any, int, str | None]] = [(data, 1, None)]
    while stack:
        value, depth, param = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, str):
            _check_text(value, param)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, param)  # a bad name is reported against its parent
                stack.append((item, depth + 1, key if param is None else param))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, param) for item in value)


def _check_text(value: str, param: str | None) -> None:
    problem = text_problem(value)
    if problem is not None:
        where = param or "the body"
        raise InvalidParameter(f"{where} {problem}", code="invalid_text", param=param)

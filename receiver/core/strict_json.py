"""A strict JSON reader for untrusted bytes.

Refuses what a permissive parser lets through and an attacker can use to make two readers
disagree: invalid UTF-8, a byte-order mark, duplicate keys, NaN and Infinity, integers beyond
64 bits, lone surrogates and deep nesting.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 16
MAX_INT = 2**63 - 1


class StrictJsonError(ValueError):
    """The bytes are not JSON we accept."""


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJsonError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise StrictJsonError("integer too large")
    value = int(text)
    if not -MAX_INT <= value <= MAX_INT:
        raise StrictJsonError("integer too large")
    return value


def _finite_float(text: str) -> float:
    if len(text) > 40:
        raise StrictJsonError("number too long")
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError("number out of range")
    return value


def _check_depth_and_strings(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_string(key)
            _check_depth_and_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth_and_strings(item, depth + 1)
    elif isinstance(value, str):
        _check_string(value)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate written as a \ud800 escape
        raise StrictJsonError("string with a lone surrogate") from exc


def loads_strict(data: bytes) -> Any:
    """Parse ``data`` as one JSON value under the rules above, or raise StrictJsonError."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise StrictJsonError("byte-order mark")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise StrictJsonError("invalid UTF-8") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except RecursionError as exc:
        raise StrictJsonError("nested too deep") from exc
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"not JSON ({exc.msg} at offset {exc.pos})") from exc
    _check_depth_and_strings(value, 0)
    return value

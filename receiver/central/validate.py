"""Checking what the operator signs, by the rules the receivers apply, before anything leaves.

Two checks, both must pass: the JSON Schemas of the wire protocol (``schemas/``), walked here
so that every problem is named by its path (``entries[3].at: ...``), and then the receiver's own
parsers (``receiver.core``), whose verdict is the one a board would give. The schema walker
covers the keywords the project's schemas use; an unknown keyword is a bug, not a pass.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
import urllib.parse
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Final

from receiver.core import commands, schedule, trustdoc, urls
from receiver.core.reasons import Rejection

SCHEMA_DIRS: Final = (
    Path(__file__).resolve().parents[2] / "schemas",  # a checkout (and an editable install)
    Path(sys.prefix) / "share" / "loa-receiver" / "schemas",  # setup.cfg data_files
)
_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$defs", "title", "description", "default", "format", "examples"}
)


# What a pattern means, in words: a regular expression is never what an operator is told.
# By the name of the schemas' definition (common.json's $defs) that holds the pattern ...
_PLAIN_WORDS: Final = {
    "audience": f"an audience: dev:<device id> or grp:<group id>, an id {commands.ID_RULE}",
    "ident": f"an id: {commands.ID_RULE}",
    "message_id": f"an id: {commands.MESSAGE_ID_RULE}",
    "sha256": "a SHA-256: 64 lowercase hex digits",
    "time": "an RFC 3339 time such as 2026-03-01T05:30:00Z",
    "device_time": "a UTC time with milliseconds such as 2026-03-01T05:30:00.123Z",
    "date": "a date YYYY-MM-DD",
    "url": "a URL: scheme://host/path, printable ASCII without spaces (percent-encode the rest)",
    "ref": "a command or document id, or <schedule id>/<entry id>/<YYYY-MM-DD>",
}
# ... or, for a pattern written in place, by the name of the field that holds it.
_FIELD_WORDS: Final = {
    "tz": "a time zone name such as Asia/Ho_Chi_Minh",
    "at": "a local time HH:MM, 00:00 to 23:59",
    "ed25519": "an Ed25519 public key in base64 (44 characters ending in '=')",
    "sig": "an Ed25519 signature in base64 (88 characters ending in '==')",
    "payload": "base64 text",
}
# A pattern no words were found for: still no regular expression (a test keeps this unused).
_NO_MATCH: Final = "is not in the form this field takes (docs/protocol.md)"


class SchemaMissingError(RuntimeError):
    """The schemas are not installed: say so rather than sign unchecked."""


def schema_dir() -> Path:
    for candidate in SCHEMA_DIRS:
        if (candidate / "common.json").is_file():
            return candidate
    raise SchemaMissingError(
        "the protocol's JSON Schemas are not installed (looked in "
        + ", ".join(str(d) for d in SCHEMA_DIRS)
        + "); reinstall loa-receiver"
    )


@cache
def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((schema_dir() / name).read_text(encoding="utf-8"))
    return loaded


def path_text(path: tuple[str | int, ...]) -> str:
    """``("entries", 3, "at")`` as ``entries[3].at``; the document itself is ``(document)``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(document)"


def _unknown_field(name: str, known: set[str]) -> str:
    meant = {"time": "at", "level": "priority", "hash": "sha256"}.get(name)
    meant = meant if meant in known else None
    meant = meant or next(iter(difflib.get_close_matches(name, sorted(known), 1)), None)
    if meant:
        return f"is not a known field; did you mean {meant}?"
    return f"is not a known field (known: {', '.join(sorted(known))})"


def _type_ok(value: Any, kind: str) -> bool:
    match kind:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer() and math.isfinite(value)
            )
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
    raise ValueError(f"unknown JSON type {kind!r} in a schema")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


class _Walker:
    """Validates one value against one schema file, yielding (path, message) problems."""

    def __init__(self, file: str) -> None:
        self.file = file

    def resolve(self, ref: str, file: str) -> tuple[dict[str, Any], str]:
        target_file, _, pointer = ref.partition("#")
        target_file = target_file or file
        node: Any = _schema(target_file)
        for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
            node = node[part]
        return node, target_file

    def check(
        self, value: Any, node: Any, path: tuple[str | int, ...], file: str
    ) -> Iterator[tuple[tuple[str | int, ...], str]]:
        if node is True:
            return
        if node is False:
            yield path, "is not allowed here"
            return
        if "$ref" in node:
            target, target_file = self.resolve(node["$ref"], file)
            plain = _PLAIN_WORDS.get(node["$ref"].rpartition("/")[2])
            for where, said in self.check(value, target, path, target_file):
                if plain is not None and where == path and said.endswith(_NO_MATCH):
                    said = f"{_short(value)} is not {plain}"  # noqa: PLW2901 - said plainly
                yield where, said
        kind = node.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(_type_ok(value, k) for k in kinds):
                yield path, f"must be {' or '.join(kinds)}, not {_short(value)}"
                return
        for keyword in node:
            if keyword in _ANNOTATIONS or keyword in ("$ref", "type"):
                continue
            yield from self._keyword(keyword, node, value, path, file)

    def _keyword(  # noqa: PLR0915 - one branch per JSON Schema keyword
        self, keyword: str, node: dict[str, Any], value: Any, path: tuple[str | int, ...], file: str
    ) -> Iterator[tuple[tuple[str | int, ...], str]]:
        rule = node[keyword]
        if keyword in ("then", "else"):
            return  # read with "if"
        if keyword == "enum":
            # JSON tells true from 1, Python does not.
            if not any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in rule):
                yield path, f"must be one of {', '.join(map(str, rule))}, not {_short(value)}"
        elif keyword == "const":
            if value != rule or isinstance(value, bool) != isinstance(rule, bool):
                yield path, f"must be {_short(rule)}, not {_short(value)}"
        elif keyword == "required":
            if isinstance(value, dict):
                for name in rule:
                    if name not in value:
                        yield (*path, name), "is missing"
        elif keyword == "properties":
            if isinstance(value, dict):
                for name, sub in rule.items():
                    if name in value:
                        yield from self.check(value[name], sub, (*path, name), file)
        elif keyword == "additionalProperties":
            if isinstance(value, dict):
                known = set(node.get("properties", {}))
                for name in value:
                    if name not in known:
                        if rule is False:
                            yield (*path, name), _unknown_field(name, known)
                        else:
                            yield from self.check(value[name], rule, (*path, name), file)
        elif keyword == "propertyNames":
            if isinstance(value, dict):
                for name in value:
                    for _p, message in self.check(name, rule, (), file):
                        yield (*path, name), f"bad field name: {message}"
        elif keyword == "maxProperties":
            if isinstance(value, dict) and len(value) > rule:
                yield path, f"must have at most {rule} fields"
        elif keyword == "items":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    yield from self.check(item, rule, (*path, index), file)
        elif keyword in ("minItems", "maxItems"):
            if isinstance(value, list):
                if keyword == "minItems" and len(value) < rule:
                    yield path, f"must list at least {rule}"
                if keyword == "maxItems" and len(value) > rule:
                    yield path, f"must list at most {rule}, not {len(value)}"
        elif keyword == "uniqueItems":
            if rule and isinstance(value, list):
                seen = [json.dumps(v, sort_keys=True) for v in value]
                if len(set(seen)) != len(seen):
                    yield path, "lists a value twice"
        elif keyword in ("minLength", "maxLength"):
            if isinstance(value, str):
                if keyword == "minLength" and len(value) < rule:
                    yield path, "must not be empty" if rule == 1 else f"is shorter than {rule}"
                if keyword == "maxLength" and len(value) > rule:
                    yield path, f"is longer than {rule} characters"
        elif keyword == "pattern":
            if isinstance(value, str) and re.search(rule, value) is None:
                field = next((p for p in reversed(path) if isinstance(p, str)), "")
                words = _FIELD_WORDS.get(field)
                yield path, f"{_short(value)} {_NO_MATCH if words is None else 'is not ' + words}"
        elif keyword in ("minimum", "maximum"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                if keyword == "minimum" and value < rule:
                    yield path, f"must be at least {rule}, not {value}"
                if keyword == "maximum" and value > rule:
                    yield path, f"must be at most {rule}, not {value}"
        elif keyword == "not":
            if not any(True for _ in self.check(value, rule, path, file)):
                yield path, "contains a control character" if "pattern" in rule else "not allowed"
        elif keyword == "allOf":
            for sub in rule:
                yield from self.check(value, sub, path, file)
        elif keyword in ("anyOf", "oneOf"):
            yield from self._choice(keyword, rule, value, path, file)
        elif keyword == "if":
            branch = (
                "then" if not any(True for _ in self.check(value, rule, path, file)) else "else"
            )
            if branch in node:
                yield from self.check(value, node[branch], path, file)
        else:
            raise ValueError(f"schema keyword {keyword!r} is not checked by receiver-admin")

    def _choice(
        self, keyword: str, rule: list[Any], value: Any, path: tuple[str | int, ...], file: str
    ) -> Iterator[tuple[tuple[str | int, ...], str]]:
        results = [list(self.check(value, sub, path, file)) for sub in rule]
        passing = sum(1 for problems in results if not problems)
        if passing == 1 or (passing > 1 and keyword == "anyOf"):
            return
        if passing > 1:
            yield path, "matches more than one form"
            return

        # None fits: say the problems of the form meant (the one whose "const" discriminators
        # hold, else the one with the fewest problems).
        def meant(problems: list[tuple[tuple[str | int, ...], str]]) -> tuple[int, int]:
            discriminator_failed = any(message.startswith('must be "') for _, message in problems)
            return (1 if discriminator_failed else 0, len(problems))

        best = min(results, key=meant)
        yield from best


def patterns_without_words() -> list[str]:
    """Where a schema has a pattern that neither :data:`_PLAIN_WORDS` nor :data:`_FIELD_WORDS`
    puts in words (the control-character guard is said by itself), as ``file:place``."""
    missing: list[str] = []

    def walk(node: Any, file: str, place: str, definition: str, field: str) -> None:
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, file, f"{place}/{index}", definition, field)
            return
        if not isinstance(node, dict):
            return
        said = definition in _PLAIN_WORDS or field in _FIELD_WORDS
        if "pattern" in node and not said:
            missing.append(f"{file}:{place or '/'}")
        for key, child in node.items():
            if key == "$defs":
                for name, sub in child.items():
                    walk(sub, file, f"{place}/$defs/{name}", name, "")
            elif key in ("properties", "patternProperties"):
                for name, sub in child.items():
                    walk(sub, file, f"{place}/{key}/{name}", definition, name)
            elif key != "not":  # ``not: {pattern}``: "contains a control character"
                walk(child, file, f"{place}/{key}", definition, field)

    for path in sorted(schema_dir().glob("*.json")):
        walk(_schema(path.name), path.name, "", "", "")
    return missing


def schema_problems(value: Any, file: str) -> list[str]:
    """Every way ``value`` breaks the schema ``file`` (e.g. ``schedule.json``), as path: what."""
    walker = _Walker(file)
    found: list[str] = []
    for path, message in walker.check(value, _schema(file), (), file):
        line = f"{path_text(path)}: {message}"
        if line not in found:
            found.append(line)
    return found


def _device_verdict(kind: str, payload: dict[str, Any]) -> Rejection | None:
    try:
        if kind == "command":
            commands.parse_command(payload, commands.parse_header(payload))
        elif kind == "schedule":
            schedule.parse_schedule(payload)
        else:
            trustdoc.parse_trust(payload)
    except Rejection as rejection:
        return rejection
    return None


def _schedule_entry_problems(payload: dict[str, Any]) -> list[str]:
    """The receiver's parser run on each entry alone, to name the entry it refuses."""
    found: list[str] = []
    entries = payload.get("entries")
    if not isinstance(entries, list):
        return found
    ids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        try:
            parsed = schedule.parse_entry(entry)
        except Rejection as rejection:
            found.append(f"entries[{index}]: {rejection.detail} ({rejection.reason})")
            continue
        if parsed.id in ids:
            found.append(f"entries[{index}].id: {parsed.id!r} is also entries[{ids[parsed.id]}]")
        ids.setdefault(parsed.id, index)
    return found


def _urls(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str, str]]:
    """Every media URL in a command or schedule, with its path."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == "url" and isinstance(item, str):
                yield path_text((*path, name)), item
            else:
                yield from _urls(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _urls(item, (*path, index))


def _url_problems(payload: dict[str, Any]) -> list[str]:
    """URLs every receiver's policy refuses, whatever its host allowlist: a scheme other than
    http or https, credentials in the URL (receiver/core/urls.py)."""
    found = []
    for where, url in _urls(payload):
        try:
            urls.check_url(url, ("http", "https"), ())
        except urls.UrlRefused as refused:
            if not refused.detail.endswith("is not on the allowlist"):  # that is each board's
                found.append(
                    f"{where}: {refused.detail} (every receiver refuses it){_encoded(url)}"
                )
    return found


def _encoded(url: str) -> str:
    """For a URL with spaces or Vietnamese letters: the form receivers take, to copy."""
    if url.isascii() and not any(c.isspace() for c in url):
        return ""
    return f"; percent-encoded it reads {urllib.parse.quote(url, safe=_URL_SAFE)}"


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def problems(kind: str, payload: dict[str, Any]) -> list[str]:
    """Everything a receiver would refuse in this payload (``command``, ``schedule``, ``trust``).

    Empty: a receiver parses it. The device's own verdict comes last, as the receiver would log
    it, when the schema says nothing (rules no schema can state: exp after iat, ...).
    """
    found = schema_problems(payload, f"{kind}.json")
    if kind == "schedule":
        for line in _schedule_entry_problems(payload):
            entry = line.split(":", 1)[0]
            if not any(f.split(":", 1)[0].startswith((entry + ".", entry + "[")) for f in found):
                found.append(line)
    if kind != "trust":
        found += [line for line in _url_problems(payload) if line not in found]
    verdict = _device_verdict(kind, payload)
    if verdict is not None and not found:
        found.append(f"(document): a receiver refuses it: {verdict.detail} ({verdict.reason})")
    return found

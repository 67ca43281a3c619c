"""The operator's input, checked: key files, and commands or documents a receiver would refuse."""

from __future__ import annotations

import argparse
import json
import math
import re
import stat
import sys
from pathlib import Path
from typing import Any, Final

import yaml

from receiver import config as config_rules
from receiver.central import validate
from receiver.central.signing import SigningKey
from receiver.core import commands
from receiver.core.envelope import MAX_MESSAGE_BYTES


class InputError(Exception):
    """Bad input from the operator (files, options, documents), said in one line or a list."""


def refuse_if_invalid(kind: str, payload: dict[str, Any]) -> None:
    """Raise InputError listing every problem a receiver would refuse (nothing is signed)."""
    try:
        found = validate.problems(kind, payload)
    except validate.SchemaMissingError as exc:
        raise InputError(str(exc)) from exc
    if found:
        what = payload.get("type", kind)
        raise InputError(
            f"the {what} would be refused by the receivers; nothing was signed or sent:\n  "
            + "\n  ".join(found)
        )


def load_keys(paths: list[str]) -> list[SigningKey]:
    """The signing keys named by ``--key``, or InputError naming the one that is not a key."""
    keys = []
    for path in paths:
        try:
            text = Path(path).read_bytes()
            keys.append(SigningKey.load(Path(path)))
        except FileNotFoundError as exc:
            raise InputError(f"--key {path}: no such file") from exc
        except OSError as exc:
            raise InputError(f"--key {path}: cannot read it ({why(exc)})") from exc
        except ValueError as exc:
            if b"PUBLIC KEY-----" in text:
                raise InputError(
                    f"--key {path}: a public key; sign with the private key file "
                    "(the one receiver-admin keygen --out wrote)"
                ) from exc
            raise InputError(f"--key {path}: {str(exc).removeprefix(f'{path}: ')}") from exc
        _warn_if_others_may_read(Path(path), keys[-1].id)
    return keys


def _warn_if_others_may_read(path: Path, key_id: str) -> None:
    """A private key that other users may read can sign as its holder: say so (not refused,
    so that a key on a shared mount still works in an emergency)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        print(
            f"receiver-admin: warning: --key {path} may be read by other users (mode "
            f"{mode:04o}): whoever read it can sign as {key_id}; chmod 600 {path}",
            file=sys.stderr,
        )


def identifier(text: str) -> str:
    """An option that names a device or a group: an id (schemas/common.json ``ident``), never
    an MQTT wildcard or a slash, for it is also a topic level."""
    if commands.ID_PATTERN.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an id: {commands.ID_RULE}")
    return text


def device_or_every(text: str) -> str:
    """``watch --device``: a device id, or ``+`` for every device."""
    return text if text == "+" else identifier(text)


def number(text: str) -> float:
    """A number of seconds: finite (``nan`` and ``inf`` are words, not durations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


#: The longest wait an option takes (``--broker-timeout``, ``fleet --timeout``, ``watch
#: --timeout``): a day. Longer is a slip of the unit; Python's waits refuse far larger values.
MAX_WAIT_S: Final = 86400
#: The longest lifetime of a command (``--ttl``): 30 days. MQTT's message expiry is 32 bits of
#: seconds; a command meant for later is sent later, or is a schedule.
MAX_COMMAND_TTL_S: Final = 30 * 86400
#: The longest a ``collect --duration`` runs: a year (0 runs until it is stopped).
MAX_RUN_S: Final = 366 * 86400
#: The longest a document may be taken up (``--ttl-days``): ten years.
MAX_DOCUMENT_DAYS: Final = 3650
#: The longest MQTT client id: MQTT 5 writes it as a string of at most 65535 UTF-8 bytes.
MAX_CLIENT_ID_BYTES: Final = 65535


def seconds(text: str) -> float:
    """A duration option: a number of seconds, not negative, at most :data:`MAX_WAIT_S`."""
    return _at_most(text, _not_negative(text), MAX_WAIT_S, "a day")


def run_seconds(text: str) -> float:
    """``collect --duration``: 0 or more seconds, at most :data:`MAX_RUN_S` (0: never stop)."""
    return _at_most(text, _not_negative(text), MAX_RUN_S, "a year; 0 runs until stopped")


def _not_negative(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 or more seconds")
    return value


def command_ttl(text: str) -> float:
    """A command's ``--ttl``: seconds, at most :data:`MAX_COMMAND_TTL_S` (0 or below is
    refused with the command, which says why)."""
    return _at_most(text, number(text), MAX_COMMAND_TTL_S, "30 days")


def _at_most(text: str, value: float, limit: int, said: str) -> float:
    if value > limit:
        raise argparse.ArgumentTypeError(f"{text!r}: give at most {limit} seconds ({said})")
    return value


def client_id(text: str) -> str:
    """``--client-id``: an MQTT client id, at most :data:`MAX_CLIENT_ID_BYTES` UTF-8 bytes."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_ID_BYTES:
        raise argparse.ArgumentTypeError(
            f"{size} bytes long: an MQTT client id is at most {MAX_CLIENT_ID_BYTES} bytes "
            "(a short name, e.g. watch-hanoi)"
        )
    return text


def session_client_id(text: str) -> str:
    """``collect --client-id``: the id of a session the broker keeps between runs, so not
    empty (the broker would name each run's session anew and keep none)."""
    if not text:
        raise argparse.ArgumentTypeError(
            "an empty client id: the broker would give each run a session of its own and keeps "
            "none, so the events sent between two runs would be lost; name this collector "
            "(e.g. collect-hanoi)"
        )
    return client_id(text)


def refuse_if_too_large(what: str, envelope: bytes) -> None:
    """The receivers refuse a message over MAX_MESSAGE_BYTES before reading it (``too_large``):
    say so rather than publish it (a retained one would replace a document they take)."""
    if len(envelope) > MAX_MESSAGE_BYTES:
        raise InputError(
            f"the signed {what} is {len(envelope)} bytes; receivers refuse a message over "
            f"{MAX_MESSAGE_BYTES} bytes (too_large); nothing was sent: split it (fewer entries "
            "per schedule, shorter titles or URLs)"
        )


def positive_int(text: str) -> int:
    """A count option (``--limit``, ``--days``): a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


#: The furthest ``schedule show`` looks ahead, in days: a year.
MAX_SHOW_DAYS: Final = 366


def days_ahead(text: str) -> int:
    """``schedule show --days``: 1 to :data:`MAX_SHOW_DAYS` (every occurrence up to then is
    listed: a mistyped huge number would run until memory ran out)."""
    value = positive_int(text)
    if value > MAX_SHOW_DAYS:
        raise argparse.ArgumentTypeError(f"{text}: give at most {MAX_SHOW_DAYS} days, e.g. 7")
    return value


def host(text: str) -> str:
    """``--host``: a host name or address; a URL or ``host:port`` is a typo, not an unknown host."""
    plain = text.strip("[]")
    if "://" in text or "/" in text or (plain.count(":") == 1):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the broker's host name or address without a scheme or port "
            "(the port goes in --port, TLS is --cafile)"
        )
    return text


def port(text: str) -> int:
    """``--port``: a TCP port, 1 to 65535 (a typo here is not the broker's fault)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 1 to 65535")
    return value


def days(text: str) -> float:
    """``--ttl-days``: how many days a document may be taken up, above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give more than 0 days, e.g. 30")
    if value > MAX_DOCUMENT_DAYS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give at most {MAX_DOCUMENT_DAYS} days (ten years), e.g. 30"
        )
    return value


def key_id(text: str) -> str:
    """``keygen --id``: a key id the receivers' config and trust documents both take."""
    problem = config_rules.key_id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return text


def topic_prefix(text: str) -> str:
    """``--prefix``: a topic prefix the receivers' config takes (else no receiver listens)."""
    problem = config_rules.topic_prefix_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return text


def scope(text: str) -> str:
    """``--scopes``: a device or group id, or ``*``, as the receivers' config takes it."""
    problem = config_rules.scope_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return text


#: The scope of a key made without ``--scopes``: every device (kept so for the scripts that rely
#: on it, but said, so that a key valid on every board is made knowingly).
EVERY_SCOPE: Final = "*"


def scopes_or_every(scopes: list[str] | None, key_id: str) -> list[str]:
    """``--scopes`` as given, or ``*`` with a note on stderr that the key is valid everywhere."""
    if scopes is not None:
        return scopes
    print(
        f"receiver-admin: note: no --scopes: key {key_id} is valid on every device and in every "
        "group (scope *); to narrow it, name the groups or devices it is for, e.g. "
        "--scopes commune-25-07873 loa-25-07873-001",
        file=sys.stderr,
    )
    return [EVERY_SCOPE]


#: ``key:value``: a key whose ':' has no space after it (YAML reads it as one word).
_KEY_WITHOUT_SPACE: Final = re.compile(r"(\s*(?:-\s+)?)([^\s:#'\"{}\[\],]+):(\S.*)")
#: ``key: value``: the key's ':' and the value after it.
_KEY_AND_VALUE: Final = re.compile(r"(\s*(?:-\s+)?)([^\s:#'\"{}\[\],]+):\s+(\S.*)")


def yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> InputError:
    """A YAML file's syntax error as one line: ``file:line:column:`` (1-based, as editors
    count), the usual causes in plain words (a tab, no space after a ':', an indentation, an
    unclosed quote), and the YAML reader's own words at the end for the rest."""
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return InputError(f"{path}:{line}:{column}: character U+{char:04X} is not allowed in YAML")
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return InputError(f"{path}: not valid YAML ({exc})")
    line, column, words = _yaml_words(text.splitlines(), exc, exc.problem_mark)
    problem = exc.problem or ""
    tag = problem.startswith("could not determine a constructor")
    if isinstance(exc, yaml.constructor.ConstructorError) and not tag:  # the loader's own words
        return InputError(f"{path}:{line + 1}:{column + 1}: {words}")
    return InputError(
        f"{path}:{line + 1}:{column + 1}: not valid YAML: {words} (the YAML reader: {problem})"
    )


def _yaml_words(
    lines: list[str], exc: yaml.MarkedYAMLError, mark: yaml.Mark
) -> tuple[int, int, str]:
    """Where to look (0-based line and column) and why, in words, for a YAML syntax error
    noticed at ``mark``."""
    problem, context, opened = exc.problem or "", exc.context or "", exc.context_mark
    here = (mark.line, mark.column)
    current = lines[mark.line] if mark.line < len(lines) else ""
    above = next(
        (i for i in range(min(mark.line, len(lines)) - 1, -1, -1) if lines[i].strip()), None
    )
    if "'\\t'" in problem:  # PyYAML writes the tab escaped
        if not current[: mark.column].strip(" -"):
            return (*here, "a tab used for indentation: indent with spaces only (2 per level)")
        return (*here, "a tab character where YAML takes none: use spaces")
    if problem == "could not find expected ':'" and opened is not None:
        return _no_space(lines, opened.line) or (
            opened.line,
            opened.column,
            "no ':' after this key: write 'key: value'",
        )
    if problem.startswith("mapping values are not allowed"):
        pair = _KEY_AND_VALUE.fullmatch(current.rstrip())
        if pair is not None and len(pair.group(1)) + len(pair.group(2)) < mark.column:
            value = json.dumps(pair.group(3).strip(), ensure_ascii=False)
            return (*here, f"a value that holds ': ' needs quotes: write {pair.group(2)}: {value}")
        found = _no_space(lines, above) if above is not None else None
        if found is not None:
            return found
        if above is not None and _indent(current) > _indent(lines[above]):
            return (
                *here,
                "this line is indented further than the line above it: the keys of one "
                "mapping start in the same column",
            )
        return (
            *here,
            "a ':' where no key can start: is there a space after each ':' above, and are "
            "values that hold ': ' quoted?",
        )
    if problem.startswith("expected <block end>"):
        return (
            *here,
            "this line is not indented like the lines above it: the keys of one mapping "
            "start in the same column (indent with spaces, 2 per level)",
        )
    for opening, what in (
        ("quoted scalar", "the quote opened here is not closed"),
        ("flow sequence", "the list opened with '[' here is not closed with ']'"),
        ("flow mapping", "the mapping opened with '{' here is not closed with '}'"),
    ):
        if opening in context and opened is not None:
            return opened.line, opened.column, what
    if problem.startswith("could not determine a constructor"):
        return (
            *here,
            "a tag ('!...') that plain YAML does not know: remove it, or quote the value",
        )
    if isinstance(exc, yaml.constructor.ConstructorError):
        return (*here, problem)
    return (*here, f"it cannot be read here{f' ({context})' if context else ''}")


def _no_space(lines: list[str], index: int) -> tuple[int, int, str] | None:
    """Line ``index`` as ``key:value`` with no space after the ':', if it is one."""
    if index >= len(lines):
        return None
    found = _KEY_WITHOUT_SPACE.fullmatch(lines[index].rstrip())
    if found is None:
        return None
    key, value = found.group(2), found.group(3)
    return (
        index,
        len(found.group(1)),
        f"no space after the ':' of this key: write '{key}: {value}', not '{key}:{value}'",
    )


def _indent(line: str) -> int:
    """Where a line's content starts, a list item's dash counted as indentation."""
    stripped = line.lstrip(" ")
    while stripped.startswith("- "):
        stripped = stripped[2:].lstrip(" ")
    return len(line) - len(stripped)


def why(exc: Exception) -> str:
    """Why a file could not be read, in a few words (not Python's ``[Errno 2] ...: 'x'``)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def positive_number(text: str) -> float:
    """A wait in seconds above 0 and at most :data:`MAX_WAIT_S` (``--broker-timeout``)."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give more than 0 seconds")
    return _at_most(text, value, MAX_WAIT_S, "a day")

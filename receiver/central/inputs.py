"""The operator's input, checked: key files, and commands or documents a receiver would refuse."""

from __future__ import annotations

import argparse
import math
import re
import stat
import sys
from pathlib import Path
from typing import Any, Final

from receiver import config as config_rules
from receiver.central import validate
from receiver.central.signing import SigningKey
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


#: A device, group or environment id (schemas/common.json ``ident``): it is also a topic level.
_IDENT: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def identifier(text: str) -> str:
    """An option that names a device or a group: an id, never an MQTT wildcard or a slash."""
    if _IDENT.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an id: 1 to 64 of lowercase a-z, 0-9, '.', '_', '-'"
        )
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


def seconds(text: str) -> float:
    """A duration option: a number of seconds, not negative."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 or more seconds")
    return value


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


def why(exc: Exception) -> str:
    """Why a file could not be read, in a few words (not Python's ``[Errno 2] ...: 'x'``)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def positive_number(text: str) -> float:
    """A wait in seconds that must be above 0 (``--broker-timeout``)."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give more than 0 seconds")
    return value

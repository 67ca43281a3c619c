"""The operator's input, checked: key files, and commands or documents a receiver would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from receiver.central import validate
from receiver.central.signing import SigningKey


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
            keys.append(SigningKey.load(Path(path)))
        except FileNotFoundError as exc:
            raise InputError(f"--key {path}: no such file") from exc
        except (OSError, ValueError) as exc:
            raise InputError(f"--key {path}: {exc}") from exc
    return keys

"""Load the technician's YAML config file into the frozen dataclasses of ``config_model``.

This module owns the file format of ``receiver.yaml``: reading it, parsing it, every rule a local
setting must follow, and the messages a technician sees when one is broken. Nothing else in the
daemon parses YAML; everything else reads :class:`~receiver.config_model.Config`.

How it works:

- PyYAML's *safe* loader only composes the file into nodes (``yaml.compose``); nothing is ever
  constructed from a tag. Walking the nodes ourselves keeps the line and column of every key and
  value, so each problem points at its place in the file.
- Each section is described declaratively (:class:`_Section`: field name, converter, default)
  plus one small ``finish`` step for the rules that join fields (``default_volume <= max_volume``,
  ``cert_file`` with ``key_file``, ...). A converter is ``(node, ctx, path) -> value``; it raises
  :class:`_BadValueError` for a bad value and the walker records it at that value's position.
- Every problem in the file is collected, then raised together as one :class:`ConfigError`, each
  as ``file:line:col: dotted.key: what is wrong`` (lines and columns count from 1; list items
  are written ``trust.keys[0].id``; problems with the whole file carry no key).
- Scalars are read from their source text with a few deliberate differences from YAML 1.1, so
  that the file means what a technician sees: a string setting takes the text as written
  (``password: 0123`` is ``"0123"``, not 83; ``env: no`` is ``"no"``), integers are plain decimal
  (``070`` is 70), and booleans are only ``true``/``false`` (``yes``/``on`` are refused: they are
  too easy to write by accident).
- A key left out takes the default of the dataclass in ``config_model`` (the single source of the
  defaults), except ``broker.port``, which defaults to 8883 when ``broker.tls`` is set.
- Relative paths are resolved against the directory of the config file.
- Secrets (``broker.password`` or the content of ``broker.password_file``) are never put into a
  message; as a second guard, any message that would contain one has it masked.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import math
import os
import pwd
import re
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from receiver.config_model import (
    AUDIO_OUTPUTS,
    PIN_FACTORIES,
    ROLES,
    BrokerConfig,
    ClockConfig,
    Config,
    GpioConfig,
    LoggingConfig,
    MediaConfig,
    PlayerConfig,
    PolicyConfig,
    StorageConfig,
    TlsConfig,
    TrustConfig,
    TrustedKey,
)
from receiver.core.commands import ID_PATTERN, ID_RULE
from receiver.core.record import record
from receiver.errors import ConfigError
from receiver.i18n import gettext_ as _
from receiver.i18n import os_reason

__all__ = [
    "ID_RULE",
    "ConfigError",
    "GpioSettings",
    "config_warnings",
    "key_expired",
    "key_id_problem",
    "load_config",
    "parse_config",
    "placeholders",
    "read_gpio_settings",
    "read_status_settings",
    "scope_problem",
    "unreadable_files",
    "unusable_directories",
    "unusable_tls_files",
]

T = TypeVar("T")

#: Where scripts/install.sh puts the config file.
INSTALLED_PATH = "/etc/loa-receiver/receiver.yaml"
#: The most groups a board may be in: its state lists them all, and schemas/state.json allows 64.
MAX_GROUPS = 64


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``; raise :class:`ConfigError` if unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if str(path) == INSTALLED_PATH:  # nothing installed yet, or the file was removed
            message = _(
                "{path}: config file not found: install loa-receiver (its package or "
                "scripts/install.sh writes this file from the example), or give --config FILE"
            )
        else:
            message = _(
                "{path}: config file not found (check the name; the installed one is {installed})"
            )
        raise ConfigError([message.format(path=path, installed=INSTALLED_PATH)]) from None
    except PermissionError:
        message = _("{path}: this user may not read the config file (run it with sudo)")
        raise ConfigError([message.format(path=path)]) from None
    except OSError as exc:
        message = _("{path}: cannot read the config file: {reason}")
        raise ConfigError([message.format(path=path, reason=os_reason(exc))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = _("{path}:{line}: not UTF-8 text; save the file as UTF-8")
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([message.format(path=path, line=line)]) from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str) -> Config:
    """Validate YAML ``text`` that was read from ``source`` (a path, used in messages).

    Relative paths in the file resolve against the directory of ``source``, and
    ``broker.password_file`` is read from there.
    """
    ctx = _Context(source, Path(source).absolute().parent)
    root = _compose(text, ctx)
    if root is not None:
        try:
            config = _CONFIG(root, ctx, "")
        except _BadValueError as exc:
            ctx.report(root, "", exc.message)
        except _ReportedError:
            pass
        else:
            if not ctx.failed:
                return config
    raise ConfigError(ctx.problems())


# --- problems and where they are ------------------------------------------------------------


class _BadValueError(Exception):
    """The value at hand is wrong; the walker reports ``message`` at the value's position."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _ReportedError(Exception):
    """The value at hand is wrong and its problems are already recorded in the context."""


class _Context:
    """What every converter may need: where relative paths start, and the list of problems."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.secrets: list[str] = []
        self._problems: list[tuple[int, int, str]] = []

    @property
    def failed(self) -> bool:
        return bool(self._problems)

    def report(self, where: yaml.Node | yaml.Mark | None, path: str, message: str) -> None:
        mark = where.start_mark if isinstance(where, yaml.Node) else where
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.report_at(line, col, path, message)

    def report_at(self, line: int, col: int, path: str, message: str) -> None:
        key = f"{path}: " if path else ""
        self._problems.append((line, col, f"{self.source}:{line}:{col}: {key}{message}"))

    def problems(self) -> list[str]:
        lines = [text for _, _, text in sorted(self._problems, key=lambda p: (p[0], p[1]))]
        # Messages never quote a secret; this is the second guard. Secrets shorter than 4
        # characters would mask ordinary words and are no secret anyway.
        for secret in self.secrets:
            if len(secret) >= 4:
                lines = [line.replace(secret, "********") for line in lines]
        return lines


def _compose(text: str, ctx: _Context) -> yaml.Node | None:
    """Parse ``text`` into nodes; report a syntax error or an empty file and return None."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # str(exc) would quote the offending line, which may hold the password: build our own.
        mark, message = _syntax_error(exc)
        ctx.report(mark, "", _("YAML syntax error: {message}").format(message=message))
        return None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        ctx.report_at(line, col, "", f"character U+{char:04X} is not allowed in YAML")
        return None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises the two kinds above
        ctx.report_at(1, 1, "", f"cannot parse YAML ({type(exc).__name__})")
        return None
    except RecursionError:
        ctx.report_at(1, 1, "", "YAML nested too deeply")
        return None
    if root is None:
        ctx.report_at(1, 1, "", _("the file holds no settings (see config/receiver.example.yaml)"))
    return root


def _syntax_error(exc: yaml.MarkedYAMLError) -> tuple[yaml.Mark | None, str]:
    """Where a technician should look, and PyYAML's complaint in plain words.

    The place is PyYAML's problem mark (where it noticed), except for a key without its colon,
    which PyYAML notices only on a later line: there the key's own line is the one to fix.
    """
    problem, context = exc.problem or "", exc.context or ""
    mark, opened = exc.problem_mark, exc.context_mark
    where = ""
    if opened is not None:
        where = _("line {line}, column {column}").format(
            line=opened.line + 1, column=opened.column + 1
        )
    if "'\\t'" in problem:  # PyYAML writes the tab escaped
        return mark, _("a tab character; indent with spaces only (YAML does not accept tabs)")
    if problem == "could not find expected ':'" and opened is not None:
        return opened, _(
            "no ':' after this key; write 'key: value' (a section name ends with ':' too)"
        )
    if problem.startswith("mapping values are not allowed"):
        return mark, _(
            "a ':' where no setting can start. Usual causes: the line above has no space "
            "after its ':' (write 'host: x', not 'host:x') or no ':' at all; this line is "
            "indented further than the one above; or a value that holds ': ' needs quotes"
        )
    if problem.startswith("expected <block end>"):
        return mark, _(
            "this line is not indented like the lines above it: the settings of one section "
            "must start in the same column (indent with spaces, 2 per level)"
        )
    if "flow sequence" in context and where:
        return mark, _("the list opened with '[' on {where} is not closed with ']'").format(
            where=where
        )
    if "flow mapping" in context and where:
        return mark, _("the mapping opened with '{{' on {where} is not closed with '}}'").format(
            where=where
        )
    if "quoted scalar" in context and where:
        return mark, _("the quote opened on {where} is not closed").format(where=where)
    message = problem or context or "cannot parse"
    if context and problem and where:
        message += f" ({context} at {where})"
    return mark or opened, message


# --- scalars -------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR, _TIMESTAMP = (
    _TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp")
)
_KINDS = (_NULL, _BOOL, _INT, _FLOAT, _STR, _TIMESTAMP)
_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")
_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")  # YAML 1.2 core schema

Converter: TypeAlias = Callable[[yaml.Node, _Context, str], T]


def _describe(node: yaml.Node) -> str:
    """What a value is, in the technician's language (for "expected ..., got ...")."""
    if isinstance(node, yaml.MappingNode):
        return _("a mapping")
    if isinstance(node, yaml.SequenceNode):
        return _("a list")
    kinds = {
        _NULL: _("nothing"),
        _BOOL: _("a boolean"),
        _INT: _("an integer"),
        _FLOAT: _("a number"),
        _STR: _("a string"),
        _TIMESTAMP: _("a date"),
    }
    return kinds.get(node.tag, f"a value tagged {node.tag}")


def _expected(wanted: str, node: yaml.Node) -> _BadValueError:
    return _BadValueError(
        _("expected {wanted}, got {kind}").format(wanted=wanted, kind=_describe(node))
    )


def _show(text: str) -> str:
    """Quote a (non-secret) value for a message, escaped and bounded."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _scalar(node: yaml.Node, expected: str) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _KINDS:
        raise _expected(expected, node)
    return node


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _text(node: yaml.Node, ctx: _Context, path: str) -> str:
    """Any non-empty string, taken as written (``0123`` stays ``"0123"``)."""
    scalar = _scalar(node, _("a string"))
    if scalar.tag == _NULL or scalar.value == "":
        raise _BadValueError(_("is empty"))
    return str(scalar.value)


def _decimal(text: str) -> int:
    """A plain decimal integer (already matched by ``_DECIMAL``), bounded before conversion."""
    digits = text.replace("_", "")
    if len(digits) > 20:  # no setting is near 10**19; int() of huge text is slow or refused
        raise _BadValueError(_("{value} is too large").format(value=_show(text)))
    return int(digits)


def _integer(node: yaml.Node) -> int:
    scalar = _scalar(node, _("an integer"))
    value = str(scalar.value)
    if scalar.style is None and _DECIMAL.fullmatch(value):
        return _decimal(value)
    if scalar.tag == _INT:  # 0x1f, 0o17, 1:30 ... are YAML 1.1 integers nobody means here
        raise _BadValueError(
            _("write {value} as a plain decimal integer").format(value=_show(value))
        )
    if scalar.style is not None and _DECIMAL.fullmatch(value):
        message = _("expected an integer, got a string ({value}): remove the quotes")
        raise _BadValueError(message.format(value=_show(value)))
    raise _expected(_("an integer"), scalar)


def _number(node: yaml.Node) -> float:
    scalar = _scalar(node, _("a number"))
    value = str(scalar.value)
    if scalar.style is None and _FLOAT_TEXT.fullmatch(value):
        number = float(value.replace("_", ""))
        if math.isfinite(number):
            return number
        raise _BadValueError(_("{value} is too large").format(value=_show(value)))
    if scalar.tag == _FLOAT:  # .inf, .nan
        raise _BadValueError(_("must be a finite number"))
    raise _expected(_("a number"), scalar)


def _in_range(value: float, lo: float | None, hi: float | None, unit: str) -> None:
    def show(number: float) -> str:
        return str(number) if isinstance(number, int) else f"{number:g}"

    units = {"seconds": _("seconds"), "percent": _("percent"), "bytes": _("bytes")}
    unit = f" {units.get(unit, unit)}" if unit else ""
    if lo is not None and hi is not None and not lo <= value <= hi:
        message = _("{value} is out of range: use {lo} to {hi}{unit}")
        raise _BadValueError(message.format(value=show(value), lo=show(lo), hi=show(hi), unit=unit))
    if lo is not None and value < lo:
        message = _("{value} is too small: use at least {lo}{unit}")
        raise _BadValueError(message.format(value=show(value), lo=show(lo), unit=unit))
    if hi is not None and value > hi:
        message = _("{value} is too large: use at most {hi}{unit}")
        raise _BadValueError(message.format(value=show(value), hi=show(hi), unit=unit))


def _int_range(lo: int | None, hi: int | None = None, unit: str = "") -> Converter[int]:
    def convert(node: yaml.Node, ctx: _Context, path: str) -> int:
        value = _integer(node)
        _in_range(value, lo, hi, unit)
        return value

    return convert


def _number_range(lo: float, hi: float, unit: str = "") -> Converter[float]:
    def convert(node: yaml.Node, ctx: _Context, path: str) -> float:
        value = _number(node)
        _in_range(value, lo, hi, unit)
        return value

    return convert


def _boolean(node: yaml.Node, ctx: _Context, path: str) -> bool:
    scalar = _scalar(node, _("true or false"))
    if scalar.style is None and scalar.value in _TRUE + _FALSE:
        return scalar.value in _TRUE
    if scalar.tag == _BOOL:
        message = _("write true or false, not {value}")
        raise _BadValueError(message.format(value=_show(scalar.value)))
    raise _expected(_("true or false"), scalar)


def _choice(*options: str) -> Converter[str]:
    def convert(node: yaml.Node, ctx: _Context, path: str) -> str:
        value = _text(node, ctx, path)
        if value in options:
            return value
        message = _("{value} is not one of: {options}")
        message = message.format(value=_show(value), options=", ".join(options))
        raise _BadValueError(message + _did_you_mean(value.lower(), options))

    return convert


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    import difflib  # only for a mistake in the config: not kept in the running daemon's memory

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return _(" (did you mean {name!r}?)").format(name=close[0]) if close else ""


#: A device, group or environment id (docs/protocol.md §2): the protocol's rule, and the same
#: rule in words for the messages (never the expression: a technician reads them), translated
#: where the daemon's messages are (:func:`_id_rule`).
_ID = ID_PATTERN


def _id_rule() -> str:
    """:data:`ID_RULE` in the technician's language."""
    return _(ID_RULE)


def _ident(node: yaml.Node, ctx: _Context, path: str) -> str:
    """A device, group or environment id as in the protocol (:data:`_ID`)."""
    value = _text(node, ctx, path)
    if not _ID.fullmatch(value):
        message = _("{value} is not a valid id ({rule})")
        raise _BadValueError(message.format(value=_show(value), rule=_id_rule()))
    return value


def scope_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a key's scope (None: nothing); receiver-admin uses it too."""
    if value != "*" and not _ID.fullmatch(value):
        return f"is neither '*' nor a device or group id ({ID_RULE})"
    return None


def _scope(node: yaml.Node, ctx: _Context, path: str) -> str:
    value = _text(node, ctx, path)
    if scope_problem(value) is not None:
        message = _("is neither '*' nor a device or group id ({rule})").format(rule=_id_rule())
        raise _BadValueError(f"{_show(value)} {message}")
    return value


def key_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a key id (None: nothing); receiver-admin uses it too."""
    if not value:
        return "is empty"
    if len(value) > 64:
        return f"is {len(value)} characters long: use at most 64"
    if not value.isprintable() or any(c.isspace() for c in value):
        return "must not contain spaces or control characters"
    return None


def _key_id(node: yaml.Node, ctx: _Context, path: str) -> str:
    value = _text(node, ctx, path)
    problem = key_id_problem(value)
    if problem is None:
        return value
    if len(value) > 64:  # the value itself would fill the line
        raise _BadValueError(problem)
    raise _BadValueError(f"{_show(value)} {problem}")


def _secret(node: yaml.Node, ctx: _Context, path: str) -> str:
    """A string that is never quoted back, not even in a type error."""
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _KINDS:
        raise _BadValueError(f"expected a string, got {_describe(node)}")
    if node.tag == _NULL or node.value == "":
        raise _BadValueError("is empty")
    value = str(node.value)
    ctx.secrets.append(value)
    return value


def _path(node: yaml.Node, ctx: _Context, path: str) -> Path:
    """A file or directory; a relative one is taken from the config file's directory."""
    value = _text(node, ctx, path)
    if "\0" in value:
        raise _BadValueError(_("must not contain a NUL character"))
    if value.startswith("~"):
        raise _BadValueError(
            _("{value}: '~' is not expanded here, write the full path").format(value=_show(value))
        )
    return ctx.base_dir / value


_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII
)


def _timestamp(node: yaml.Node, ctx: _Context, path: str) -> datetime:
    value = _text(node, ctx, path)
    if not _RFC3339.fullmatch(value):
        raise _BadValueError(
            _(
                "{value} is not an RFC 3339 time with a time zone (e.g. 2027-12-31T23:59:59Z or "
                "2027-12-31T23:59:59+07:00)"
            ).format(value=_show(value))
        )
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise _BadValueError(
            _("{value} is not a valid time: {reason}").format(value=_show(value), reason=exc)
        ) from None


_SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _ed25519(node: yaml.Node, ctx: _Context, path: str) -> bytes:
    """Standard base64 (with padding) of a raw 32-byte Ed25519 public key."""
    value = _text(node, ctx, path)
    wanted = _("write the base64 of the raw 32-byte Ed25519 public key")
    if value.startswith(("ssh-ed25519", "-----BEGIN")):
        raise _BadValueError(_("looks like an OpenSSH or PEM key") + f": {wanted}")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _BadValueError(_("is not valid base64") + f": {wanted}") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _BadValueError(_("is not canonical base64") + f": {wanted}")
    if len(raw) == 44 and raw.startswith(_SPKI_ED25519_PREFIX):
        raise _BadValueError(_("is a DER SubjectPublicKeyInfo (44 bytes)") + f": {wanted}")
    if len(raw) != 32:
        decodes = _("decodes to {count} bytes").format(count=len(raw))
        raise _BadValueError(f"{decodes}: {wanted}")
    return raw


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """A DNS name or an IP address (already lowercased)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.split(".")
    return len(host) <= 253 and not labels[-1].isdigit() and all(map(_LABEL.fullmatch, labels))


def _host(node: yaml.Node, ctx: _Context, path: str) -> str:
    value = _text(node, ctx, path).lower()
    if "://" in value:
        raise _BadValueError(
            _("{value}: write the host name alone, without a scheme").format(value=_show(value))
        )
    if value.count(":") == 1:
        raise _BadValueError(
            _("{value}: write the host name alone; the port goes in broker.port").format(
                value=_show(value)
            )
        )
    if not _valid_host(value):
        raise _BadValueError(
            _("{value} is not a host name or IP address").format(value=_show(value))
        )
    return value


_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


def _host_port(node: yaml.Node, ctx: _Context, path: str) -> str:
    """``host`` or ``host:port`` (IPv6 in brackets), lowercased."""
    value = _text(node, ctx, path).lower()
    match = _HOST_PORT.fullmatch(value)
    if "://" in value or "/" in value:
        raise _BadValueError(
            _("{value}: write only a host name or host:port, not a URL").format(value=_show(value))
        )
    if match is None:
        raise _BadValueError(
            _("{value} is not a host name or host:port").format(value=_show(value))
        )
    host, port = match["host"], match["port"]
    if not _valid_host(host.strip("[]")) or (host.startswith("[") and ":" not in host):
        raise _BadValueError(
            _("{value} is not a host name or host:port").format(value=_show(value))
        )
    if port is not None and not 1 <= int(port) <= 65535:
        raise _BadValueError(_("{value}: the port must be 1 to 65535").format(value=_show(value)))
    return value


def _split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``host``/``host:port``/``[v6]:port`` as checked by :func:`_host_port`, apart."""
    match = _HOST_PORT.fullmatch(value)
    if match is None:  # pragma: no cover - _host_port accepted it
        raise ValueError(value)
    port = match["port"]
    return match["host"].strip("[]"), default_port if port is None else int(port)


def _header_gpio(number: int) -> int | None:
    """The GPIO number of pin ``number`` of the 40-pin header (``BOARDn``, ``J8:n``), or None
    where that pin is power or ground or not on the header.

    The header is the same on every 40-pin Raspberry Pi (B+ to 5, Zero, 400); gpiozero's own
    table is read, imported only when a file names a header pin.
    """
    from gpiozero.pins.data import PLUS_J8

    pins: dict[int, dict[str, str]] = PLUS_J8[2]
    name = pins.get(number, {}).get("gpio")
    return None if name is None else int(name.removeprefix("GPIO"))


_PIN_NAME = re.compile(r"(GPIO|BCM|BOARD)([0-9]{1,2})")


def _amp_pin(node: yaml.Node, ctx: _Context, path: str) -> str:
    """A BCM number (``17``) or a gpiozero pin name: ``GPIO17``, ``BCM17``, ``BOARD11``."""
    wanted = _("a BCM number (17) or a pin name like GPIO17, BCM17 or BOARD11")
    scalar = _scalar(node, wanted)
    if scalar.tag == _NULL:
        raise _expected(wanted, scalar)
    if scalar.style is None and _DECIMAL.fullmatch(scalar.value):
        kind, number = "GPIO", _decimal(scalar.value)
    elif match := _PIN_NAME.fullmatch(str(scalar.value).upper()):
        kind, number = match[1], int(match[2])
    else:
        message = _("expected {wanted}, got {value}")
        raise _BadValueError(message.format(wanted=wanted, value=_show(str(scalar.value))))
    if kind == "BOARD":
        if not 1 <= number <= 40:
            message = _("there is no header pin {number}: use BOARD1 to BOARD40")
            raise _BadValueError(message.format(number=number))
        if _header_gpio(number) is None:
            message = _("header pin {number} is not a GPIO pin (it is power or ground)")
            raise _BadValueError(message.format(number=number))
        return f"BOARD{number}"
    if not 0 <= number <= 27:
        message = _("GPIO{number} is not on the 40-pin header: use GPIO0 to GPIO27")
        raise _BadValueError(message.format(number=number))
    return f"GPIO{number}"


_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


def topic_prefix_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a topic prefix (None: nothing); receiver-admin uses it
    too, so that it never sends where no receiver listens."""
    if not _TOPIC_PREFIX.fullmatch(value) or len(value) > 128:
        return (
            "is not a topic prefix: use levels of A-Z a-z 0-9 . _ - "
            "joined by '/', no wildcards and no leading or trailing '/'"
        )
    return None


def _topic_prefix(node: yaml.Node, ctx: _Context, path: str) -> str:
    value = _text(node, ctx, path)
    problem = topic_prefix_problem(value)
    if problem is not None:
        raise _BadValueError(f"{_show(value)} {problem}")
    return value


# --- combinators ---------------------------------------------------------------------------


def _optional(convert: Converter[T]) -> Converter[T | None]:
    """``~``/``null``/nothing means None (off, or "let the library choose")."""

    def optional(node: yaml.Node, ctx: _Context, path: str) -> T | None:
        return None if _is_null(node) else convert(node, ctx, path)

    return optional


@record
class _Distinct(Generic[T]):
    """Items of a list must differ in ``key``; ``what`` names it in the message."""

    key: Callable[[T], Hashable]
    what: str


def _list_of(
    item: Converter[T],
    *,
    min_items: int = 0,
    max_items: int | None = None,
    distinct: Sequence[_Distinct[T]] = (),
) -> Converter[tuple[T, ...]]:
    """A YAML list (nothing means an empty one), every item converted and reported."""

    def convert(node: yaml.Node, ctx: _Context, path: str) -> tuple[T, ...]:
        if _is_null(node):
            nodes: list[yaml.Node] = []
        elif isinstance(node, yaml.SequenceNode):
            nodes = list(node.value)
        else:
            message = _("expected a list, got {kind} (write [a, b] or '- a' lines)")
            raise _BadValueError(message.format(kind=_describe(node)))
        failed = False
        items: list[T] = []
        seen: list[dict[Hashable, int]] = [{} for _ in distinct]
        for index, item_node in enumerate(nodes):
            item_path = f"{path}[{index}]"
            try:
                value = item(item_node, ctx, item_path)
            except _BadValueError as exc:
                ctx.report(item_node, item_path, exc.message)
                failed = True
                continue
            except _ReportedError:
                failed = True
                continue
            for rule, firsts in zip(distinct, seen, strict=True):
                first = firsts.setdefault(rule.key(value), index)
                if first != index:
                    ctx.report(item_node, item_path, f"{rule.what} as {path}[{first}]")
                    failed = True
            items.append(value)
        if len(nodes) < min_items:
            needs = (
                _("needs at least 1 item") if min_items == 1 else _("needs at least {count} items")
            )
            raise _BadValueError(needs.format(count=min_items))
        if max_items is not None and len(nodes) > max_items:
            raise _BadValueError(_("at most {count} items").format(count=max_items))
        if failed:
            raise _ReportedError
        return tuple(items)

    return convert


_SAME_VALUE: _Distinct[Any] = _Distinct(lambda value: value, "same value")

_REQUIRED: Any = object()  # a field default: the key must be present
_MODEL_DEFAULT: Any = object()  # a field default: leave it out, the dataclass default applies


@record
class _Field:
    name: str
    convert: Converter[Any]
    default: Any = _MODEL_DEFAULT


class _Checker:
    """Lets a section's ``finish`` step report a problem at a field (or the section)."""

    def __init__(
        self, ctx: _Context, mapping: yaml.Node, path: str, nodes: dict[str, yaml.Node]
    ) -> None:
        self.ctx = ctx
        self.failed = False
        self._mapping, self._path, self._nodes = mapping, path, nodes

    def __call__(self, name: str, message: str) -> None:
        self.ctx.report(self._nodes.get(name, self._mapping), _join(self._path, name), message)
        self.failed = True


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: Callable[..., T]) -> Callable[[dict[str, Any], _Checker], T]:
    """A ``finish`` step with no rules across fields: just build the dataclass."""
    return lambda values, check: cls(**values)


@record
class _Section(Generic[T]):
    """A YAML mapping whose keys are ``fields``; ``finish`` checks across fields and builds."""

    fields: tuple[_Field, ...]
    finish: Callable[[dict[str, Any], _Checker], T]

    def __call__(self, node: yaml.Node, ctx: _Context, path: str) -> T:
        if _is_null(node):  # "player:" with every key commented out: all defaults
            pairs: list[tuple[yaml.Node, yaml.Node]] = []
        elif isinstance(node, yaml.MappingNode):
            pairs = list(node.value)
        else:
            raise _expected(_("a mapping of settings"), node)
        nodes, keys_ok = self._value_nodes(pairs, ctx, path)
        values, values_ok = self._values(node, nodes, ctx, path)
        if not (keys_ok and values_ok):  # rules across fields would only repeat what is said
            raise _ReportedError
        check = _Checker(ctx, node, path, nodes)
        result = self.finish(values, check)
        if check.failed:
            raise _ReportedError
        return result

    def _value_nodes(
        self, pairs: list[tuple[yaml.Node, yaml.Node]], ctx: _Context, path: str
    ) -> tuple[dict[str, yaml.Node], bool]:
        """The value node of each known key; report unknown and duplicate keys."""
        names = [f.name for f in self.fields]
        keys: dict[str, yaml.Node] = {}
        nodes: dict[str, yaml.Node] = {}
        ok = True
        for key_node, value_node in pairs:
            if not isinstance(key_node, yaml.ScalarNode):
                ctx.report(key_node, path, _("keys must be plain names"))
                ok = False
                continue
            name = str(key_node.value)
            key_path = _join(path, name)
            if name in keys:
                first = keys[name].start_mark.line + 1
                message = _("duplicate key (first set on line {line}): keep one of the two")
                ctx.report(key_node, key_path, message.format(line=first))
                ok = False
            elif name not in names:
                ctx.report(key_node, key_path, _("unknown key") + _did_you_mean(name, names))
                ok = False
            else:
                nodes[name] = value_node
            keys.setdefault(name, key_node)
        return nodes, ok

    def _values(
        self, node: yaml.Node, nodes: dict[str, yaml.Node], ctx: _Context, path: str
    ) -> tuple[dict[str, Any], bool]:
        """Convert every field that is present; report missing required ones."""
        values: dict[str, Any] = {}
        ok = True
        for fld in self.fields:
            field_path = _join(path, fld.name)
            if fld.name not in nodes:
                if fld.default is _REQUIRED:
                    ctx.report(node, field_path, _("missing (required)"))
                    ok = False
                elif fld.default is not _MODEL_DEFAULT:
                    values[fld.name] = fld.default
                continue
            value_node = nodes[fld.name]
            try:
                values[fld.name] = fld.convert(value_node, ctx, field_path)
            except _BadValueError as exc:
                ctx.report(value_node, field_path, exc.message)
                ok = False
            except _ReportedError:
                ok = False
        return values, ok


# --- the sections --------------------------------------------------------------------------


def _finish_tls(values: dict[str, Any], check: _Checker) -> TlsConfig:
    tls = TlsConfig(**values)
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "key_file" if tls.key_file is None else "cert_file"
        check(missing, _("cert_file and key_file go together: set both or neither"))
    return tls


_TLS = _Section(
    (
        _Field("ca_file", _optional(_path)),
        _Field("cert_file", _optional(_path)),
        _Field("key_file", _optional(_path)),
    ),
    _finish_tls,
)


def _tls(node: yaml.Node, ctx: _Context, path: str) -> TlsConfig | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        raise _BadValueError(_("write 'tls: {}' for TLS with the system's CAs, or leave tls out"))
    return _optional(_TLS)(node, ctx, path)


def _read_secret_file(path: Path, check: _Checker) -> str | None:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        check("password_file", _("file not found: {path}").format(path=path))
    except UnicodeDecodeError:
        check("password_file", _("{path} is not UTF-8 text").format(path=path))
    except OSError as exc:
        message = _("cannot read {path}: {reason}")
        check("password_file", message.format(path=path, reason=os_reason(exc)))
    else:
        if secret:
            check.ctx.secrets.append(secret)
            return secret
        check("password_file", _("{path} is empty").format(path=path))
    return None


def _finish_broker(values: dict[str, Any], check: _Checker) -> BrokerConfig:
    password_file: Path | None = values.pop("password_file")
    if password_file is not None:
        if values["password"] is not None:
            check("password_file", _("set broker.password or broker.password_file, not both"))
        else:
            values["password"] = _read_secret_file(password_file, check)
    if values["port"] is None:
        values["port"] = 1883 if values["tls"] is None else 8883
    if "failover" in values:
        values["failover"] = tuple(
            _split_host_port(item, values["port"]) for item in values["failover"]
        )
    broker = BrokerConfig(**values)
    if (broker.host, broker.port) in broker.failover:
        message = _("{host}:{port} is already broker.host")
        check("failover", message.format(host=broker.host, port=broker.port))
    if broker.password is not None and broker.username is None:
        check("username", _("required when a password is set"))
    if broker.reconnect_max_s < broker.reconnect_min_s:
        check("reconnect_max_s", _("must not be below broker.reconnect_min_s"))
    return broker


_BROKER = _Section(
    (
        _Field("host", _host, _REQUIRED),
        _Field("port", _int_range(1, 65535), None),
        _Field("tls", _tls, None),
        _Field("username", _optional(_text)),
        _Field("password", _optional(_secret), None),
        _Field("password_file", _optional(_path), None),
        _Field("keepalive_s", _int_range(5, 65535, "seconds")),
        _Field("topic_prefix", _topic_prefix),
        _Field("session_expiry_s", _int_range(0, 2**32 - 1, "seconds")),
        _Field("reconnect_min_s", _number_range(0.1, 3600, "seconds")),
        _Field("reconnect_max_s", _number_range(0.1, 3600, "seconds")),
        _Field("failover", _list_of(_host_port, distinct=[_SAME_VALUE])),
        _Field("failback_s", _number_range(5, 86400, "seconds")),
    ),
    _finish_broker,
)

_DEFAULT_THRESHOLDS = TrustConfig(keys=()).thresholds

_THRESHOLDS = _Section(
    tuple(_Field(role, _int_range(1, 100), _DEFAULT_THRESHOLDS[role]) for role in ROLES),
    lambda values, check: dict(values),
)

_TRUSTED_KEY = _Section(
    (
        _Field("id", _key_id, _REQUIRED),
        _Field("ed25519", _ed25519, _REQUIRED),
        _Field("roles", _list_of(_choice(*ROLES), min_items=1, distinct=[_SAME_VALUE]), _REQUIRED),
        _Field("scopes", _list_of(_scope, min_items=1, distinct=[_SAME_VALUE]), _REQUIRED),
        _Field("not_after", _optional(_timestamp)),
    ),
    _build(TrustedKey),
)

_TRUST = _Section(
    (
        _Field(
            "keys",
            _list_of(
                _TRUSTED_KEY,
                min_items=1,
                distinct=[
                    _Distinct(lambda key: key.id, "same id"),
                    _Distinct(lambda key: key.ed25519, "same public key"),
                ],
            ),
            _REQUIRED,
        ),
        _Field("thresholds", _THRESHOLDS),
    ),
    _build(TrustConfig),
)


def _finish_player(values: dict[str, Any], check: _Checker) -> PlayerConfig:
    player = PlayerConfig(**values)
    if player.default_volume > player.max_volume:
        message = _("must not be above player.max_volume ({max_volume})")
        check("default_volume", message.format(max_volume=player.max_volume))
    if player.output == "file" and player.wav_file is None:
        check("wav_file", _("required when player.output is 'file'"))
    return player


_PLAYER = _Section(
    (
        _Field("output", _choice(*AUDIO_OUTPUTS)),
        _Field("alsa_device", _optional(_text)),
        _Field("wav_file", _optional(_path)),
        _Field("vlc_args", _list_of(_text)),
        _Field("default_volume", _int_range(0, 100, "percent")),
        _Field("max_volume", _int_range(0, 100, "percent")),
        _Field("max_play_duration_s", _int_range(1, 86400, "seconds")),
        _Field("stall_timeout_s", _number_range(5, 300, "seconds")),
        _Field("stream_max_restarts", _int_range(0, 100)),
        _Field("stream_healthy_s", _number_range(5, 3600, "seconds")),
        _Field("fallback_file", _optional(_path)),
    ),
    _finish_player,
)


def _finish_gpio(values: dict[str, Any], check: _Checker) -> GpioConfig:
    gpio = GpioConfig(**values)
    pins = [
        ("amp_pin", gpio.amp_pin),
        ("mic_pin", gpio.mic_pin),
        ("amp_fault_pin", gpio.amp_fault_pin),
    ]
    # Compared by GPIO number: BOARD11 is GPIO17 (gpiozero would refuse the second at start).
    seen: dict[int, str] = {}
    for key, pin in pins:
        if pin is None:
            continue
        number = _gpio_number(pin)
        if number in seen:
            if pin == f"GPIO{number}":
                message = _("{pin} is already used by gpio.{key}")
            else:
                message = _("{pin} is GPIO{number}, which is already used by gpio.{key}")
            check(key, message.format(pin=pin, number=number, key=seen[number]))
        seen[number] = key
    return gpio


def _gpio_number(pin: str) -> int:
    """The GPIO number of a pin name as :func:`_amp_pin` returns it (``GPIO17``, ``BOARD11``)."""
    if pin.startswith("BOARD"):
        number = _header_gpio(int(pin.removeprefix("BOARD")))
        if number is None:  # pragma: no cover - _amp_pin accepts only header GPIO pins
            raise ValueError(pin)
        return number
    return int(pin.removeprefix("GPIO"))


_GPIO = _Section(
    (
        _Field("pin_factory", _choice(*PIN_FACTORIES)),
        _Field("amp_pin", _amp_pin),
        _Field("active_high", _boolean),
        _Field("warm_up_s", _number_range(0, 60, "seconds")),
        _Field("tail_s", _number_range(0, 60, "seconds")),
        _Field("mic_pin", _optional(_amp_pin)),
        _Field("amp_fault_pin", _optional(_amp_pin)),
        _Field("inputs_active_high", _boolean),
    ),
    _finish_gpio,
)


_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")


def _quiet_period(node: yaml.Node, ctx: _Context, path: str) -> tuple[int, int]:
    value = _text(node, ctx, path)
    match = _HHMM.fullmatch(value)
    if match is None:
        raise _BadValueError(
            _("{value} is not a period like 21:30-05:00").format(value=_show(value))
        )
    hour1, min1, hour2, min2 = (int(g) for g in match.groups())
    start, end = hour1 * 60 + min1, hour2 * 60 + min2
    if start == end:
        raise _BadValueError(_("a quiet period must not start and end at the same minute"))
    return start, end


def _timezone(node: yaml.Node, ctx: _Context, path: str) -> str:
    value = _text(node, ctx, path)
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise _BadValueError(
            _("{value} is not an IANA time zone such as Asia/Ho_Chi_Minh").format(
                value=_show(value)
            )
        ) from exc
    return value


_POLICY = _Section(
    (
        _Field("timezone", _timezone),
        _Field("quiet_hours", _list_of(_quiet_period)),
        _Field("emergency_volume", _int_range(0, 100, "percent")),
        _Field("relay_max_toggles_per_min", _int_range(2, 60)),
        _Field("late_join_s", _number_range(0, 3600, "seconds")),
        _Field("rejections_per_window", _int_range(1, 10_000)),
        _Field("rejection_window_s", _number_range(0.1, 3600, "seconds")),
    ),
    _build(PolicyConfig),
)


def _finish_media(values: dict[str, Any], check: _Checker) -> MediaConfig:
    media = MediaConfig(**values)
    if media.cache_quota_bytes < media.max_file_bytes:
        check("cache_quota_bytes", _("must not be below media.max_file_bytes"))
    return media


_MEDIA = _Section(
    (
        _Field("allowed_schemes", _list_of(_choice("http", "https"), distinct=[_SAME_VALUE])),
        _Field("allowed_hosts", _list_of(_host_port, distinct=[_SAME_VALUE])),
        _Field("max_file_bytes", _int_range(1, None, "bytes")),
        _Field("fetch_deadline_s", _number_range(1, 86400, "seconds")),
        _Field("cache_quota_bytes", _int_range(1, None, "bytes")),
    ),
    _finish_media,
)


def _finish_storage(values: dict[str, Any], check: _Checker) -> StorageConfig:
    storage = StorageConfig(**values)
    state, cache = storage.state_dir, storage.cache_dir
    if state == cache or state.is_relative_to(cache) or cache.is_relative_to(state):
        # The cache is trimmed to its quota by deleting files: it must never hold the state.
        check("cache_dir", _("must be apart from storage.state_dir (neither inside the other)"))
    return storage


_STORAGE = _Section(
    (_Field("state_dir", _path), _Field("cache_dir", _path)),
    _finish_storage,
)

_LOGGING = _Section(
    (
        _Field("level", _choice("debug", "info", "warning", "error")),
        _Field("format", _choice("auto", "json", "console")),
    ),
    _build(LoggingConfig),
)

_CLOCK = _Section(
    (
        _Field("trust_system_clock", _choice("auto", "always", "never")),
        _Field("max_skew_s", _int_range(0, 86400, "seconds")),
        _Field("max_command_age_s", _int_range(60, 30 * 86400, "seconds")),
        _Field("sync_grace_s", _int_range(0, 600, "seconds")),
    ),
    _build(ClockConfig),
)

_CONFIG = _Section(
    (
        _Field("device_id", _ident, _REQUIRED),
        _Field("env", _ident, _REQUIRED),
        # Required on purpose: a forgotten list would silently ignore group broadcasts.
        _Field("groups", _list_of(_ident, max_items=MAX_GROUPS, distinct=[_SAME_VALUE]), _REQUIRED),
        _Field("broker", _BROKER, _REQUIRED),
        _Field("trust", _TRUST, _REQUIRED),
        _Field("player", _PLAYER),
        _Field("gpio", _GPIO),
        _Field("media", _MEDIA),
        _Field("policy", _POLICY),
        _Field("storage", _STORAGE),
        _Field("logging", _LOGGING),
        _Field("clock", _CLOCK),
    ),
    lambda values, check: Config(**values, source=Path(check.ctx.source)),
)


# --- what the daemon must not start with ---------------------------------------------------

# The public key of the example config's placeholder: nobody holds its private key.
_PLACEHOLDER_KEYS = frozenset({base64.b64decode("D2a95YId0a+MgHdAYzSwhqRFK88Ffq4QRPqR4OEb020=")})
_PLACEHOLDER_PASSWORDS = frozenset({"change-me", "changeme"})


def _is_example_host(host: str) -> bool:
    """A name under a reserved example domain (RFC 2606: example.com, *.example) or ours
    (mqtt.example.vn): the example config's broker, never a real one."""
    return "example" in host.split(".")


def placeholders(config: Config) -> list[str]:
    """The example's placeholders still in ``config``, one message each ([] when none).

    A daemon started with them could only retry a broker that does not exist or wait for
    commands nobody can sign, so ``receiver run`` refuses them (exit 78) and ``check-config``
    warns about them.
    """
    source = config.source
    found: list[str] = []
    if _is_example_host(config.broker.host):
        message = _(
            "{source}: broker.host: {host!r} is the example's placeholder: "
            "write your broker's host name"
        )
        found.append(message.format(source=source, host=config.broker.host))
    for index, (host, _port) in enumerate(config.broker.failover):
        if _is_example_host(host):
            message = _(
                "{source}: broker.failover[{index}]: {host!r} is the example's placeholder: "
                "write your standby broker's host name or leave failover out"
            )
            found.append(message.format(source=source, index=index, host=host))
    if config.broker.password in _PLACEHOLDER_PASSWORDS:
        message = _("{source}: broker.password: still the example's placeholder")
        found.append(message.format(source=source))
    for index, key in enumerate(config.trust.keys):
        if key.ed25519 in _PLACEHOLDER_KEYS or "placeholder" in key.id:
            message = _(
                "{source}: trust.keys[{index}]: {key!r} is the example's placeholder key: "
                "write the public key of your central station"
            )
            found.append(message.format(source=source, index=index, key=key.id))
    return found


def unreadable_files(config: Config) -> list[str]:
    """Files the config names that this process cannot read (TLS CA, certificate, key).

    Checked at start-up so that a missing or unreadable key is a config error (exit 78, once)
    rather than a connection failure retried for ever.
    """
    tls = config.broker.tls
    if tls is None:
        return []
    found: list[str] = []
    for name in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(tls, name)
        if path is None:
            continue
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            message = _(
                "{source}: broker.tls.{name}: cannot read {path}: {reason} "
                "(the daemon runs as the user loa-receiver)"
            )
            reason = os_reason(exc)
            found.append(message.format(source=config.source, name=name, path=path, reason=reason))
    return found


def unusable_tls_files(config: Config) -> list[str]:
    """TLS files that can be read but that the daemon could not load: loaded here as the daemon
    loads them (an ``ssl`` context's ``load_verify_locations`` and ``load_cert_chain``).

    A public key, an empty file or a YAML file given as ``broker.tls.ca_file`` passes
    :func:`unreadable_files`; the daemon would then stop at every start on "cannot load TLS
    files". Call it once :func:`unreadable_files` found nothing.
    """
    tls = config.broker.tls
    if tls is None:
        return []
    import ssl  # only for a config with TLS

    source = config.source
    found: list[str] = []
    no_certificate = _(
        "{source}: broker.tls.{name}: {path} holds no certificate: give the PEM file that "
        "starts with -----BEGIN CERTIFICATE----- ({reason})"
    )
    for name in ("ca_file", "cert_file"):
        path: Path | None = getattr(tls, name)
        if path is None:
            continue
        try:
            ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            reason = _ssl_reason(exc)
            found.append(no_certificate.format(source=source, name=name, path=path, reason=reason))
    if found or tls.cert_file is None or tls.key_file is None:
        return found
    key = tls.key_file
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        # Without a password callback OpenSSL would ask for a passphrase on the terminal.
        context.load_cert_chain(str(tls.cert_file), str(key), password=_passphrase_asked)
    except _PassphraseAskedError:
        message = _(
            "{source}: broker.tls.key_file: {path} is protected by a passphrase, which the "
            "daemon cannot give: keep the key without one (openssl pkey -in OLD -out NEW), "
            "readable by root and the group loa-receiver only"
        )
        found.append(message.format(source=source, path=key))
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            message = _(
                "{source}: broker.tls.key_file: {path} is not the key of the certificate "
                "in broker.tls.cert_file ({cert})"
            )
            found.append(message.format(source=source, path=key, cert=tls.cert_file))
        else:
            message = _(
                "{source}: broker.tls.key_file: {path} holds no private key: give the PEM file "
                "of the key that goes with broker.tls.cert_file ({reason})"
            )
            found.append(message.format(source=source, path=key, reason=_ssl_reason(exc)))
    return found


class _PassphraseAskedError(Exception):
    """OpenSSL asked for the passphrase of an encrypted key."""


def _passphrase_asked() -> str:
    raise _PassphraseAskedError


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's complaint without the C source line (``... (_ssl.c:4154)``)."""
    text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def unusable_directories(config: Config) -> list[str]:
    """``storage.state_dir`` and ``storage.cache_dir`` where this process could not keep files.

    A directory that is a file, that sits under a file or under a link leading nowhere (a USB
    stick that is not mounted), that this user may not write to, or that cannot be made (``/proc``
    takes no new directory, whoever asks) stops the daemon at start-up whatever the number of
    restarts; so do files in the state directory that this user may not write to (left by a
    hand-run as root). Checked with the TLS files, so it is one clear refusal (exit 78) and a
    warning of ``check-config``. A directory that is missing is made to see that it can be, then
    removed: the check leaves the disk as it found it.
    """
    found: list[str] = []
    for name in ("state_dir", "cache_dir"):
        path: Path = getattr(config.storage, name)
        problem = _directory_problem(path, config.source, name)
        if problem is None and name == "state_dir":
            problem = _foreign_files(path, config.source)
        if problem is not None:
            found.append(problem)
    return found


def _directory_problem(path: Path, source: Path | None, name: str) -> str | None:
    """What keeps ``path`` (``storage.<name>``) from being this user's directory; None if it is
    one or can be made."""
    existing = path
    while not existing.is_dir() and existing != existing.parent:
        if existing.is_symlink():  # leads nowhere, or to a file: mkdir says "File exists"
            message = _(
                "{source}: storage.{name}: {link} is a link to {target}, which is not a "
                "directory: mount what it leads to, or point the link at a directory"
            )
            return message.format(
                source=source, name=name, link=existing, target=os.readlink(existing)
            )
        if existing.exists():
            message = _(
                "{source}: storage.{name}: {path} cannot be a directory: {blocker} is a file"
            )
            return message.format(source=source, name=name, path=path, blocker=existing)
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        message = _(
            "{source}: storage.{name}: this user may not write in {where} (the daemon runs "
            "as the user loa-receiver, and its service may write only in /var/lib/loa-receiver "
            "and /var/cache/loa-receiver)"
        )
        return message.format(source=source, name=name, where=existing)
    failed = _make_and_remove(path, existing)
    if failed is not None:
        message = _(
            "{source}: storage.{name}: the directory {path} cannot be made ({reason}): give a "
            "directory on the board's card or a mounted drive"
        )
        return message.format(source=source, name=name, path=path, reason=os_reason(failed))
    return None


def _make_and_remove(path: Path, existing: Path) -> OSError | None:
    """Make the directories from ``existing`` down to ``path``, then remove them again: what
    failed, or None."""
    missing: list[Path] = []
    while path != existing:
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
            made.append(directory)
    except OSError as exc:
        return exc
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
    return None


def _foreign_files(state_dir: Path, source: Path | None) -> str | None:
    """Files of the state directory this user may not use (made by a hand-run as root): the
    daemon would stop at the first one with "Permission denied"."""
    refused: list[str] = []
    owners: set[str] = set()
    try:
        entries = sorted(os.scandir(state_dir), key=lambda entry: entry.name)
    except OSError:
        return None  # not this check's business: the directory's own check tells
    for entry in entries:
        # The device key is only read (0600 or 0400, both fine); the rest is written too.
        needed = os.R_OK if entry.name == "device.key" else os.R_OK | os.W_OK
        if entry.is_dir(follow_symlinks=False):
            needed |= os.W_OK | os.X_OK
        if os.access(entry.path, needed, follow_symlinks=False):
            continue
        refused.append(entry.path)
        with contextlib.suppress(OSError):
            owners.add(_user_name(entry.stat(follow_symlinks=False).st_uid))
    if not refused:
        return None
    message = _(
        "{source}: storage.state_dir: this user ({user}) may not write to {files} (owned by "
        "{owners}): give them back to the daemon's user: sudo chown -R {owner} {path}"
    )
    return message.format(
        source=source,
        user=_user_name(os.geteuid()),
        files=", ".join(refused),
        owners=", ".join(sorted(owners)),
        owner=_user_name(state_dir.stat().st_uid),
        path=state_dir,
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- what the daemon starts with, but a technician must hear of ---------------------------

#: Roles whose keys sign commands (``root`` signs only lists of trusted keys).
_COMMAND_ROLES = ("operator", "emergency")


def config_warnings(config: Config, now: datetime) -> list[str]:
    """What the daemon starts with but that will fail later, one message each ([] when none).

    Expired trusted keys and a command role whose threshold the valid keys no longer reach (the
    board refuses what needs them; a new list of keys from central may still replace them, so
    the daemon does start), and a ``player.fallback_file`` the daemon cannot read (noticed only
    when a relay fails on air). ``check-config`` prints them as warnings and still exits 0; the
    daemon logs them at start.
    """
    return _expired_keys(config, now) + _unreadable_fallback(config) + _missing_sound_card(config)


def key_expired(key: TrustedKey, now: datetime) -> bool:
    """Whether the key's ``not_after`` has passed."""
    return key.not_after is not None and key.not_after < now


def _covers(key: TrustedKey, config: Config) -> bool:
    """Whether ``key``'s scopes take in this device (as :meth:`receiver.core.trust.Key.covers`)."""
    scopes = set(key.scopes)
    return "*" in scopes or config.device_id in scopes or bool(scopes & set(config.groups))


def _expired_keys(config: Config, now: datetime) -> list[str]:
    source, keys = config.source, config.trust.keys
    found: list[str] = []

    def expired(key: TrustedKey) -> bool:
        return key_expired(key, now)

    for index, key in enumerate(keys):
        if expired(key) and key.not_after is not None:
            message = _(
                "{source}: trust.keys[{index}]: {key!r} expired on {when} (not_after): "
                "the board refuses whatever it signs"
            )
            when = key.not_after.isoformat()
            found.append(message.format(source=source, index=index, key=key.id, when=when))
    if not any(map(expired, keys)):
        return found
    # A role counts the keys that hold it, cover this device and have not expired (trust.py).
    roots = sum(
        1 for key in keys if "root" in key.roles and _covers(key, config) and not expired(key)
    )
    roots_suffice = roots >= config.trust.thresholds["root"]
    commanders = [key for key in keys if set(key.roles) & set(_COMMAND_ROLES)]
    if commanders and all(map(expired, commanders)):
        if roots_suffice:
            message = _(
                "{source}: trust.keys: every key that may sign commands (role operator or "
                "emergency) has expired: the board will refuse every command until central "
                "sends it a new list of trusted keys, or until this file has a valid key"
            )
        else:
            message = _(
                "{source}: trust.keys: every key that may sign commands (role operator or "
                "emergency) has expired, and too few root keys are valid to accept a new list "
                "of keys from central: the board will refuse every command until this file has "
                "a valid key"
            )
        return [*found, message.format(source=source)]
    return found + _short_roles(config, now, roots_suffice)


def _short_roles(config: Config, now: datetime, roots_suffice: bool) -> list[str]:
    """A command role whose threshold its still-valid keys no longer reach, because some of them
    expired: what needs that role is refused from now on (a threshold of 2 with one of two keys
    expired, the only emergency key expired beside valid operator keys)."""
    what = {
        "operator": _(
            "the commands that need it (play at level normal or priority, volume, "
            "relay, report, schedules)"
        ),
        "emergency": _("emergency warnings (play at level emergency, and schedules with one)"),
    }
    if roots_suffice:
        way_out = _(
            "until central sends it a new list of trusted keys, or until this file has enough "
            "valid keys"
        )
    else:
        way_out = _(
            "until this file has enough valid keys (too few root keys are valid to accept a new "
            "list of keys from central)"
        )
    message = _(
        "{source}: trust.keys: valid keys with the role {role} for this device: {valid}, "
        "of {needed} needed (trust.thresholds.{role}): the board will refuse {what} {way_out}"
    )
    found: list[str] = []
    for role in _COMMAND_ROLES:
        held = [key for key in config.trust.keys if role in key.roles and _covers(key, config)]
        left = sum(1 for key in held if not key_expired(key, now))
        needed = config.trust.thresholds[role]
        if left < needed and left < len(held):
            found.append(
                message.format(
                    source=config.source,
                    role=role,
                    valid=left,
                    needed=needed,
                    what=what[role],
                    way_out=way_out,
                )
            )
    return found


def _unreadable_fallback(config: Config) -> list[str]:
    path = config.player.fallback_file
    if path is None:
        return []
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        message = _(
            "{source}: player.fallback_file: cannot read {path}: {reason} (the daemon runs as "
            "the user loa-receiver): a relay whose stream fails would end in silence instead"
        )
        reason = os_reason(exc)
        return [message.format(source=config.source, path=path, reason=reason)]
    return []


#: The kernel's list of the board's sound cards (absent where there is no ALSA at all).
ASOUND_CARDS = Path("/proc/asound/cards")
_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*?)\s*\]", re.MULTILINE)
_CARD_ARGUMENT = re.compile(r"CARD=([^,]+)")  # hw:CARD=Headphones,DEV=0
_FIRST_ARGUMENT = re.compile(r"^\w+:([^,=]+)(?:,|$)")  # hw:1,0 or plughw:Headphones


def _missing_sound_card(config: Config) -> list[str]:
    """An ``alsa_device`` that names a card the board does not have: libVLC then plays to
    nowhere without an error, and every item is reported played (a card plugged in later, a
    USB one, is still said: the technician checks it is there)."""
    device = config.player.alsa_device
    if config.player.output != "alsa" or not device:
        return []
    named = _CARD_ARGUMENT.search(device) or _FIRST_ARGUMENT.match(device)
    if named is None:
        return []  # "default", "pulse": ALSA's own choice
    card = named.group(1)
    try:
        listed = ASOUND_CARDS.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []  # no ALSA to ask: nothing to say
    cards = _CARD_LINE.findall(listed)
    if any(card in (index, name) for index, name in cards):
        return []
    message = _(
        "{source}: player.alsa_device: {device} names a sound card this board does not have "
        "(it has: {cards}; `aplay -L` lists the names): nothing would be heard"
    )
    have = ", ".join(name for _, name in cards) or _("none")
    return [message.format(source=config.source, device=device, cards=have)]


class _PartialFile:
    """A config file read whole if valid, else section by section (:meth:`section`), for the
    tools that must work despite a mistake elsewhere in the file (``relay-off``, ``status``)."""

    def __init__(self, path: Path) -> None:
        self.config: Config | None = None
        self.problems: list[str] = []
        self.readable = False  # the file could be read as text (valid or not)
        self.mapping = False  # ... and holds a mapping of sections
        self._sections: dict[str, yaml.Node] = {}
        self._ctx = _Context(str(path), path.absolute().parent)
        try:
            self.config = load_config(path)
        except ConfigError as exc:
            self.problems = exc.problems
        else:
            self.readable = self.mapping = True
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        self.readable = True
        root = _compose(text, self._ctx)
        if isinstance(root, yaml.MappingNode):
            self.mapping = True
            self._sections = {
                str(key.value): value
                for key, value in root.value
                if isinstance(key, yaml.ScalarNode)
            }

    def has(self, name: str) -> bool:
        return name in self._sections

    def section(self, name: str, reader: _Section[T]) -> T | None:
        """Section ``name`` read on its own; None if it is absent or has a problem."""
        node = self._sections.get(name)
        if node is None:
            return None
        part = _Context(self._ctx.source, self._ctx.base_dir)
        try:
            result = reader(node, part, name)
        except (_BadValueError, _ReportedError):
            return None
        return None if part.failed else result


@record
class GpioSettings:
    """What ``relay-off`` could read of a config file that may be broken elsewhere."""

    gpio: GpioConfig | None  # None: the gpio section itself is unusable
    state_dir: Path  # from the file's storage section if usable, else the default
    problems: list[str]  # every problem of the whole file ([] if it is valid)


def read_gpio_settings(path: Path, state_dir: Path | None = None) -> GpioSettings:
    """Only the ``gpio`` and ``storage`` sections of the file at ``path``, each on its own.

    An unrelated mistake elsewhere in the file (``env: Prod``) must not stop the stop helper
    from switching the amplifier off. ``state_dir`` stands in for an unreadable storage section
    (default: the default state directory).
    """
    default_state = StorageConfig().state_dir if state_dir is None else state_dir
    file = _PartialFile(path)
    if file.config is not None:
        return GpioSettings(file.config.gpio, file.config.storage.state_dir, [])
    if not file.mapping:
        return GpioSettings(None, default_state, file.problems)
    gpio = file.section("gpio", _GPIO) if file.has("gpio") else GpioConfig()
    storage = file.section("storage", _STORAGE)
    return GpioSettings(gpio, storage.state_dir if storage else default_state, file.problems)


@record
class StatusSettings:
    """What ``status`` could read of a config file that may be broken elsewhere."""

    storage: StorageConfig | None  # None: the file cannot be read at all
    storage_from_file: bool  # False: the storage section is unusable, these are the defaults
    timezone: str
    problems: list[str]  # every problem of the whole file ([] if it is valid)


def read_status_settings(path: Path) -> StatusSettings:
    """Only the ``storage`` and ``policy`` sections of the file at ``path``, each on its own.

    ``status`` needs only where the state is (and the time zone to show it in): a mistake in
    ``broker.port`` must not hide the board's state. A file that cannot be read at all (not
    found, not UTF-8, no permission) gives no storage: then the path is what is wrong.
    """
    file = _PartialFile(path)
    if file.config is not None:
        return StatusSettings(file.config.storage, True, file.config.policy.timezone, [])
    if not file.readable:
        return StatusSettings(None, False, PolicyConfig().timezone, file.problems)
    storage = file.section("storage", _STORAGE)
    from_file = storage is not None or (file.mapping and not file.has("storage"))
    policy = file.section("policy", _POLICY) or PolicyConfig()
    return StatusSettings(storage or StorageConfig(), from_file, policy.timezone, file.problems)

"""Logging: structlog to stdout, one JSON line per event for journald, readable on a terminal.

Every value is bounded and escaped before it is rendered, so a hostile string from a message
(newlines, ANSI escapes, bidi controls, megabytes) can neither forge a log line nor flood the
journal. Device-wide fields are bound on the logger, not in contextvars, because paho's and
libVLC's threads do not see contextvars.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog  # its asyncio waits for a first use (receiver/__init__.py, receiver.deferred)

MAX_VALUE_CHARS: Final = 200
MAX_TRACEBACK_CHARS: Final = 4000  # a bug's traceback, kept on its one (escaped) line
_LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# journald reads a leading "<N>" as the syslog priority of the line.
_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2}
_UNSAFE: Final = frozenset(
    # C0 and C1 controls, DEL, line/paragraph separators, bidi overrides and isolates, BOM
    (
        *range(0x00, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0xFEFF,
    )
)


def bounded(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` as text with control characters escaped and the length capped."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    escaped = "".join(
        (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        if ord(ch) in _UNSAFE
        else ch
        for ch in text
    )
    return f"{escaped}…(+{cut} chars)" if cut > 0 else escaped


def _bound_values(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, bool | int | float) or value is None:
            continue
        if isinstance(value, bytes | bytearray):
            event[key] = f"<{len(value)} bytes>"
        else:
            event[key] = bounded(
                value, MAX_TRACEBACK_CHARS if key == "exception" else MAX_VALUE_CHARS
            )
    return event


def _journald_prefix(_: Any, method: str, event: Mapping[str, Any]) -> str:
    rendered = json.dumps(dict(event), ensure_ascii=False, default=str)
    return f"<{_PRIORITY.get(method, 6)}>{rendered}"


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once per process. ``fmt``: auto | json | console."""
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else _journald_prefix
    )
    # The console renderer shows a traceback itself; for JSON it becomes the "exception" field.
    tracebacks: list[Any] = [] if console else [structlog.processors.format_exc_info]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            _bound_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

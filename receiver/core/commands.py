"""Command payloads: the common header and each command's body, validated with bounds.

Header problems are ``malformed``; body problems are ``bad_body``. Unknown fields are refused:
a field this version does not understand might carry a meaning it would silently ignore.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from receiver.core import reasons
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.vocabulary import PRIORITIES, Priority, RelayMode

ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: :data:`ID_PATTERN` in words, for people (docs/protocol.md section 2's id rule).
ID_RULE: Final = (
    "1-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
)
MESSAGE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: :data:`MESSAGE_ID_PATTERN` in words.
MESSAGE_ID_RULE: Final = (
    "1-64 characters: letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
)
SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
RFC3339_PATTERN: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
URL_PATTERN: Final = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
MAX_TARGET_CHARS: Final = 200  # a stop may name a schedule occurrence: schedule/entry/date
COMMAND_TYPES: Final = ("play", "stop", "volume", "relay", "report")
MAX_SEQ: Final = 2**63 - 1
MAX_AUDIENCE: Final = 64
MAX_FILES: Final = 32
MAX_URL_CHARS: Final = 2048
MAX_TITLE_CHARS: Final = 200
MAX_DURATION_S: Final = 86_400
MAX_REPEAT: Final = 20
COMMON_FIELDS: Final = frozenset({"id", "seq", "iat", "exp", "env", "aud"})
HEADER_FIELDS: Final = COMMON_FIELDS | {"type", "body"}


@record
class Header:
    id: str
    seq: int
    iat: float  # seconds since the epoch
    exp: float
    env: str
    aud: tuple[str, ...]
    type: str


@record
class MediaFile:
    url: str
    sha256: str
    size: int
    title: str


@record
class Play:
    priority: Priority
    files: tuple[MediaFile, ...]  # empty for a stream
    stream_url: str | None
    start_at: float | None
    volume: int | None
    repeat: int
    max_duration_s: int

    @property
    def title(self) -> str:
        return self.files[0].title if self.files else (self.stream_url or "")


@record
class Stop:
    target: str  # "all" or a command id


@record
class Volume:
    level: int


@record
class Relay:
    name: str
    state: RelayMode | Literal["auto"]
    duration_s: int | None


@record
class Report:
    pass


Body = Play | Stop | Volume | Relay | Report


@record
class Command:
    header: Header
    body: Body


def parse_time(value: Any, what: str, reason: reasons.Reason) -> float:
    """An RFC 3339 timestamp with an explicit offset, as seconds since the epoch."""
    if not isinstance(value, str) or not RFC3339_PATTERN.fullmatch(value):
        raise Rejection(reason, f"{what} is not an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise Rejection(reason, f"{what} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise Rejection(reason, f"{what} has no time zone offset")
    return parsed.timestamp()


def _int_in(value: Any, low: int, high: int, what: str, reason: reasons.Reason) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Rejection(reason, f"{what} must be an integer from {low} to {high}")
    return value


def _str(value: Any, what: str, reason: reasons.Reason, max_chars: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise Rejection(reason, f"{what} must be a string of 1 to {max_chars} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise Rejection(reason, f"{what} contains control characters")
    return value


def _object(
    value: Any, what: str, allowed: frozenset[str], reason: reasons.Reason
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejection(reason, f"{what} must be an object")
    extra = set(value) - allowed
    if extra:
        raise Rejection(reason, f"{what} has an unknown field {sorted(extra)[0][:40]!r}")
    return value


def parse_header(doc: Any, *, document_fields: frozenset[str] | None = None) -> Header:
    """The common header. ``document_fields`` replaces type/body for schedule documents."""
    allowed = HEADER_FIELDS if document_fields is None else COMMON_FIELDS | document_fields
    payload = _object(doc, "payload", allowed, reasons.MALFORMED)
    message_id = _str(payload.get("id"), "id", reasons.MALFORMED, 64)
    if not MESSAGE_ID_PATTERN.fullmatch(message_id):
        raise Rejection(reasons.MALFORMED, "id has characters outside [A-Za-z0-9._:-]")
    seq = _int_in(payload.get("seq"), 0, MAX_SEQ, "seq", reasons.MALFORMED)
    iat = parse_time(payload.get("iat"), "iat", reasons.MALFORMED)
    exp = parse_time(payload.get("exp"), "exp", reasons.MALFORMED)
    if exp <= iat:
        raise Rejection(reasons.MALFORMED, "exp is not after iat")
    env = _str(payload.get("env"), "env", reasons.MALFORMED, 64)
    if not ID_PATTERN.fullmatch(env):
        raise Rejection(reasons.MALFORMED, "env has characters outside [a-z0-9._-]")
    aud = payload.get("aud")
    if not isinstance(aud, list) or not 0 < len(aud) <= MAX_AUDIENCE:
        raise Rejection(reasons.MALFORMED, f"aud must be a list of 1 to {MAX_AUDIENCE} entries")
    for entry in aud:
        if not isinstance(entry, str) or not _is_audience(entry):
            raise Rejection(reasons.MALFORMED, "aud entries are dev:<id> or grp:<id>")
    kind = payload.get("type") if document_fields is None else "document"
    if not isinstance(kind, str):
        raise Rejection(reasons.MALFORMED, "type missing")
    return Header(message_id, seq, iat, exp, env, tuple(aud), kind)


def _is_audience(entry: str) -> bool:
    prefix, _, ident = entry.partition(":")
    return prefix in ("dev", "grp") and bool(ID_PATTERN.fullmatch(ident))


def addressed_to(header: Header, device_id: str, groups: tuple[str, ...]) -> bool:
    return f"dev:{device_id}" in header.aud or any(f"grp:{g}" in header.aud for g in groups)


def parse_command(doc: Any, header: Header) -> Command:
    """Validate the body of a command whose header already passed ``parse_header``."""
    body = doc.get("body")
    parsers: dict[str, Callable[[Any], Body]] = {
        "play": parse_play_body,
        "stop": _parse_stop,
        "volume": _parse_volume,
        "relay": _parse_relay,
        "report": _parse_report,
    }
    parser = parsers.get(header.type)
    if parser is None:
        raise Rejection(reasons.BAD_BODY, "unknown command type")
    return Command(header, parser(body))


def parse_play_body(value: Any) -> Play:
    body = _object(
        value,
        "body",
        frozenset({"priority", "source", "start_at", "volume", "repeat", "max_duration_s"}),
        reasons.BAD_BODY,
    )
    priority = body.get("priority")
    if priority not in PRIORITIES:
        raise Rejection(reasons.BAD_BODY, "priority must be normal, priority or emergency")
    source = _object(body.get("source"), "source", frozenset({"files", "stream"}), reasons.BAD_BODY)
    files: tuple[MediaFile, ...] = ()
    stream_url: str | None = None
    if ("files" in source) == ("stream" in source):
        raise Rejection(reasons.BAD_BODY, "source needs exactly one of files or stream")
    if "files" in source:
        entries = source["files"]
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_FILES:
            raise Rejection(reasons.BAD_BODY, f"files must list 1 to {MAX_FILES} files")
        files = tuple(_parse_file(entry) for entry in entries)
    else:
        stream = _object(source["stream"], "stream", frozenset({"url"}), reasons.BAD_BODY)
        stream_url = _parse_url(stream.get("url"))
    start_at = None
    if "start_at" in body:
        start_at = parse_time(body["start_at"], "start_at", reasons.BAD_BODY)
    volume = None
    if "volume" in body:
        volume = _int_in(body["volume"], 0, 100, "volume", reasons.BAD_BODY)
    repeat = _int_in(body.get("repeat", 1), 1, MAX_REPEAT, "repeat", reasons.BAD_BODY)
    max_duration = _int_in(
        body.get("max_duration_s"), 1, MAX_DURATION_S, "max_duration_s", reasons.BAD_BODY
    )
    return Play(priority, files, stream_url, start_at, volume, repeat, max_duration)


def _parse_file(value: Any) -> MediaFile:
    entry = _object(value, "file", frozenset({"url", "sha256", "size", "title"}), reasons.BAD_BODY)
    url = _parse_url(entry.get("url"))
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise Rejection(reasons.BAD_BODY, "sha256 must be 64 lowercase hex digits")
    size = _int_in(entry.get("size"), 1, 2**40, "size", reasons.BAD_BODY)
    title = _str(entry.get("title", sha256[:12]), "title", reasons.BAD_BODY, MAX_TITLE_CHARS)
    return MediaFile(url, sha256, size, title)


def _parse_url(value: Any) -> str:
    url = _str(value, "url", reasons.BAD_BODY, MAX_URL_CHARS)
    if not URL_PATTERN.fullmatch(url):
        raise Rejection(reasons.BAD_BODY, "url must be printable ASCII without spaces")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise Rejection(reasons.BAD_BODY, "url has an invalid port") from exc
    if not parts.scheme or not parts.hostname:
        raise Rejection(reasons.BAD_BODY, "url needs a scheme and a host")
    return url


def _parse_stop(value: Any) -> Stop:
    body = _object(value, "body", frozenset({"target"}), reasons.BAD_BODY)
    target = _str(body.get("target"), "target", reasons.BAD_BODY, MAX_TARGET_CHARS)
    return Stop(target)


def _parse_volume(value: Any) -> Volume:
    body = _object(value, "body", frozenset({"level"}), reasons.BAD_BODY)
    return Volume(_int_in(body.get("level"), 0, 100, "level", reasons.BAD_BODY))


def _parse_relay(value: Any) -> Relay:
    body = _object(value, "body", frozenset({"name", "state", "duration_s"}), reasons.BAD_BODY)
    if body.get("name") != "amp":
        raise Rejection(reasons.BAD_BODY, "the only relay is 'amp'")
    state = body.get("state")
    if state not in ("on", "off", "auto"):
        raise Rejection(reasons.BAD_BODY, "state must be on, off or auto")
    duration = None
    if "duration_s" in body:
        duration = _int_in(body["duration_s"], 1, MAX_DURATION_S, "duration_s", reasons.BAD_BODY)
    if state == "on" and duration is None:
        raise Rejection(reasons.BAD_BODY, "relay on needs duration_s")
    return Relay("amp", state, duration)


def _parse_report(value: Any) -> Report:
    _object(value if value is not None else {}, "body", frozenset(), reasons.BAD_BODY)
    return Report()

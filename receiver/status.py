"""The device's last state on local disk, and ``receiver status``: what a technician reads over SSH.

The daemon calls :func:`write_status` after each state publish, and when the link's attempts
fail for a new reason (their count at most every 30 s), with the JSON of the retained
``{p}/dev/{device}/state`` message (``docs/protocol.md`` §10), whether or not the broker could
be reached; its ``link`` also has three members the board keeps to itself: ``since`` (RFC
3339), ``attempts`` (failed since the link was last up) and ``cause``
(:data:`receiver.mqtt_client.CAUSES`, said in words here). ``receiver status`` reads only this
file (:func:`read_status`) and prints :func:`format_status`: it works with the network down
and never talks to the daemon.

The write is atomic (a temporary file in the same directory, then ``rename``), so a reader sees
the old or the new state, never half of one. There is no fsync: the file is informational, the
next state publish rewrites it, and a power cut that loses the last write only makes it older.
Mode 0640: readable by the daemon's group (the state directory itself is usually 0700, so a
technician runs ``sudo receiver status``).

:func:`format_status` is pure (the caller passes the times) and tolerant: the file may come from
an older or newer daemon, so a member that is missing or of an unexpected type is shown as
``?`` or left out, never an exception. Members it knows beyond the protocol's list, if the
daemon adds them: ``link`` (:class:`receiver.mqtt_client.LinkStatus`), ``faults`` (a list of
strings), ``relay_override``, ``health`` (:func:`receiver.health.read_health`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Final, TypeGuard

from receiver.core.record import record
from receiver.i18n import gettext_ as _
from receiver.i18n import os_reason
from receiver.terminal import one_line
from receiver.timefmt import ts_utc

__all__ = [
    "STALE_AFTER_S",
    "STATUS_FILE",
    "OutboxSummary",
    "StatusError",
    "format_outbox",
    "format_rows",
    "format_status",
    "read_outbox",
    "read_status",
    "status_path",
    "write_status",
]

STATUS_FILE: Final = "status.json"
FILE_MODE: Final = 0o640
#: The protocol has the state published at least every 60 s: older information is flagged.
STALE_AFTER_S: Final = 180.0
_MAX_BYTES: Final = 1024 * 1024  # a state message is about 500 bytes
_LABEL_WIDTH: Final = 11


class StatusError(ValueError):
    """The status file exists but cannot be read or is not a state message."""


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE


def write_status(state_dir: Path, state_message: bytes) -> None:
    """Replace the status file with ``state_message`` atomically (no fsync; mode 0640).

    Raises OSError (disk full, read-only file system, ...); the daemon should log it and go
    on: the file is only informational. No temporary file is left behind.
    """
    fd, temp_name = tempfile.mkstemp(dir=state_dir, prefix=f".{STATUS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(state_message)
        os.replace(temp_name, status_path(state_dir))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last state the daemon wrote, or None if there is no status file (yet).

    Raises :class:`StatusError` if the file cannot be read or is not a JSON object.
    """
    path = status_path(state_dir)
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        message = _("cannot read {path}: {reason}")
        raise StatusError(message.format(path=path, reason=os_reason(exc))) from exc
    if len(raw) > _MAX_BYTES:
        message = _("{path} is larger than {size} bytes: not a state message")
        raise StatusError(message.format(path=path, size=_MAX_BYTES))
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        message = _("{path} is not valid JSON: {error}")
        raise StatusError(message.format(path=path, error=exc)) from exc
    if not isinstance(value, dict):
        raise StatusError(_("{path} does not hold a JSON object").format(path=path))
    return value


OUTBOX_FILE: Final = "outbox.db"


@record
class OutboxSummary:
    """What waits in the daemon's outbox (:class:`receiver.outbox.Outbox`)."""

    pending: int
    first_n: int | None
    last_n: int | None
    dropped_total: int


def read_outbox(state_dir: Path) -> OutboxSummary | None:
    """The outbox's events still waiting for the broker, read-only; None without an outbox.

    Opened read-only (a URI with ``mode=ro``), so a running daemon's file is never changed and
    no journal or lock file is left behind. Raises :class:`StatusError` if it cannot be read.
    """
    path = state_dir / OUTBOX_FILE
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            count, first, last = db.execute(
                "SELECT COUNT(*), MIN(n), MAX(n) FROM events"
            ).fetchone()
            row = db.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StatusError(_("cannot read {path}: {reason}").format(path=path, reason=exc)) from exc
    return OutboxSummary(int(count), first, last, 0 if row is None else int(row[0]))


def format_outbox(outbox: OutboxSummary | None) -> str:
    if outbox is None:
        return _("none yet (no {file})").format(file=OUTBOX_FILE)
    if outbox.pending == 0:
        text = _("empty: every event reached the broker")
    else:
        plural = "" if outbox.pending == 1 else "s"
        text = _("{count} event{plural} waiting for the broker").format(
            count=outbox.pending, plural=plural
        )
        text += (
            f" (n {outbox.first_n})"
            if outbox.pending == 1
            else (f" (n {outbox.first_n} to {outbox.last_n})")
        )
    if outbox.dropped_total:
        text += _("; {count} dropped for lack of room").format(count=outbox.dropped_total)
    return text


# --- formatting ------------------------------------------------------------------------------


def format_status(
    status: dict[str, Any],
    now_utc: float,
    *,
    now_mono: float | None = None,
    written_utc: float | None = None,
    tz: tzinfo = UTC,
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """A block of ``label  value`` lines for a technician; never raises on odd content.

    ``extra`` rows (label, value) end the block, their labels translated like the others.

    ``now_utc`` is the current wall-clock time (epoch seconds) for "updated 12 s ago".
    ``now_mono`` (``time.monotonic()`` of this machine) turns the link's monotonic ``since``
    into "for 5 min" (as of the update; left out if the machine rebooted since);
    ``written_utc`` (the file's mtime) dates a state without ``ts`` (the
    offline state). Times are shown in ``tz``.
    """
    rows: list[tuple[str, str]] = []

    def add(label: str, value: str) -> None:
        rows.append((_(label) if label else "", value))

    def block() -> str:
        rows.extend((_(label), value) for label, value in extra)
        return "\n".join(format_rows(rows))

    device = _text(status.get("device"))
    made = ts_utc(status.get("ts"))
    if made is None:
        made = written_utc
    add("device", device)
    add(
        "updated",
        _("unknown") if made is None else f"{_ago(now_utc - made)} ({_clock_time(made, tz)})",
    )
    if status.get("online") is False:
        add("daemon", _("stopped (its last message was the offline state)"))
        return block()
    if made is not None and now_utc - made > STALE_AFTER_S:
        add("", _("WARNING: old; a running daemon rewrites this file at least every minute."))
        add("", _("Is it running? systemctl status loa-receiver"))

    # The link's "since" is this machine's monotonic clock: measured up to when the state was
    # made (now minus its age), so an old file does not claim a link that is up "for 3 h".
    state_mono = None if now_mono is None else now_mono - max(0.0, now_utc - (made or now_utc))
    add("broker", _link(status.get("link"), state_mono, tz))
    add("software", _text(status.get("sw")))
    uptime = status.get("uptime_s")
    add("uptime", _duration(uptime) if _is_number(uptime) else "?")
    add("playing", _playing(status, now_utc, tz))
    volume = status.get("volume")
    add("volume", f"{volume} %" if _is_number(volume) else "?")
    add("relay", _relay(status))
    add("schedules", _schedules(status.get("schedules")))
    trust = status.get("trust_version")
    if _is_number(trust):
        config = _(" (the config's keyring)") if trust == 0 else ""
        add("trust", _("version {version}").format(version=trust) + config)
    else:
        add("trust", "?")
    add("clock", _clock_synced(status.get("clock_synced")))
    add("cache", _cache(status.get("cache")))
    add("faults", _faults(status.get("faults")))
    health = status.get("health")
    if isinstance(health, dict):
        add("health", format_health(health))
    return block()


def format_rows(rows: list[tuple[str, str]]) -> list[str]:
    """``label  value`` lines, the values in one column (labels may be translated, so longer)."""
    width = max([_LABEL_WIDTH, *(len(label) + 1 for label, _value in rows)])
    return [f"{label:<{width}}{value}".rstrip() for label, value in rows]


def format_health(health: dict[str, Any]) -> str:
    """One line from :func:`receiver.health.read_health`'s dict (None values left out)."""
    parts: list[str] = []
    temp = health.get("cpu_temp_c")
    if _is_number(temp):
        parts.append(f"CPU {temp:.1f} °C")
    load = health.get("load_1m")
    if _is_number(load):
        parts.append(_("load {load}").format(load=f"{load:.2f}"))
    mem = health.get("mem_available_bytes")
    if _is_number(mem):
        parts.append(_("memory {size} available").format(size=_size(mem)))
    disks = health.get("disk_free_bytes")
    if isinstance(disks, dict):
        names = {"state": _("state"), "cache": _("cache")}
        free = [f"{names.get(name, name)} {_size(v)}" for name, v in disks.items() if _is_number(v)]
        if free:
            parts.append(_("disk free: {disks}").format(disks=", ".join(free)))
    return ", ".join(parts) or "?"


def _link_cause(cause: str, error: str, broker: str) -> str | None:
    """A :data:`receiver.mqtt_client.CAUSES` member in words (None: not one this one knows)."""
    host = broker.rpartition(":")[0] or broker or "?"
    words = {
        "refused_credentials": lambda: _("the broker refused the user name or password"),
        # Mosquitto 2 answers a wrong password so too, not as refused_credentials.
        "refused_not_authorised": lambda: _(
            "the broker refused it as not authorised: a wrong user name or password, or a user "
            "it does not let in"
        ),
        "refused": lambda: _("the broker refused it ({error})"),
        "dns": lambda: _("the broker's name does not resolve ({host})"),
        "tcp_refused": lambda: _("nothing answers on the broker's port (is it running?)"),
        "timeout": lambda: _("no answer from the broker (network, firewall?)"),
        "unreachable": lambda: _("the broker cannot be reached ({error})"),
        "tls_verify": lambda: _("the broker's certificate was not accepted ({error})"),
        "tls": lambda: _("the TLS handshake with the broker failed ({error})"),
        "no_answer": lambda: _("the broker did not answer the connection in time"),
        "lost": lambda: _("the connection was lost ({error})"),
    }
    text = words.get(cause)
    return None if text is None else text().format(error=_text(error), host=_text(host))


def _link_down(link: dict[str, Any], tz: tzinfo) -> str | None:
    """A link that is not up, from a daemon that says since when, how many attempts and why
    (the status file's own members); None for an older one."""
    attempts, cause, error = link.get("attempts"), link.get("cause"), link.get("last_error")
    if not _is_number(attempts):
        return None
    since = ts_utc(link.get("since"))
    when = [] if since is None else [_("since {time}").format(time=_hms(since, tz))]
    if not isinstance(error, str) or not error:
        return _("connecting") + (f" ({when[0]})" if when else "")
    broker = link.get("broker")
    said = _link_cause(
        cause if isinstance(cause, str) else "", error, broker if isinstance(broker, str) else ""
    )
    if attempts:
        plural = "" if attempts == 1 else "s"
        when.append(_("{count} failed attempt{plural}").format(count=attempts, plural=plural))
    text = _("NOT connected: {reason}").format(reason=said or _text(error))
    return text + (f" ({', '.join(when)})" if when else "")


def _hms(utc: float, tz: tzinfo) -> str:
    try:
        return datetime.fromtimestamp(utc, tz).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def _link(link: Any, state_mono: float | None, tz: tzinfo = UTC) -> str:
    if not isinstance(link, dict):
        return _("? (this daemon does not report its link in the state)")
    up = link.get("up")
    if up is False:
        down = _link_down(link, tz)
        if down is not None:
            return down
    text = _("connected") if up is True else _("NOT connected") if up is False else "?"
    since = link.get("since")
    if _is_number(since) and state_mono is not None and state_mono >= since:
        text += _(" for {duration}").format(duration=_duration(state_mono - since))
    elif isinstance(since, str) and since:
        utc = ts_utc(since)
        text += " " + _("since {time}").format(time=_text(since) if utc is None else _hms(utc, tz))
    reconnects = link.get("reconnects")
    if _is_number(reconnects):
        plural = "" if reconnects == 1 else "s"
        text += ", " + _("{count} reconnect{plural}").format(count=reconnects, plural=plural)
    error = link.get("last_error")
    if isinstance(error, str) and error:
        text += _("; last error: {error}").format(error=_text(error))
    return text


def _playing(status: dict[str, Any], now_utc: float, tz: tzinfo) -> str:
    state = status.get("state")
    playing = status.get("playing")
    if state != "playing" or not isinstance(playing, dict):
        return (
            _("nothing (idle)")
            if state == "idle"
            else _("? (state {state})").format(state=_text(state))
        )
    priority = playing.get("priority")
    words = {"normal": _("normal"), "priority": _("priority"), "emergency": _("emergency")}
    said = words.get(priority, _text(priority)) if isinstance(priority, str) else _text(priority)
    text = f'"{_text(playing.get("title"))}", {said}'
    ref = playing.get("ref")
    if isinstance(ref, str):
        text += f", ref {_text(ref)}"
    since = ts_utc(playing.get("since"))
    if since is not None:
        text += ", " + _("since {time}").format(time=f"{_clock_time(since, tz)}")
        text += f" ({_ago(now_utc - since)})"
    return text


def _relay(status: dict[str, Any]) -> str:
    relays = status.get("relays")
    if not isinstance(relays, dict) or not relays:
        return "?"
    said = {"on": _("on"), "off": _("off")}
    text = ", ".join(
        f"{_text(name)} {said.get(value, _text(value)) if isinstance(value, str) else _text(value)}"
        for name, value in sorted(relays.items())
    )
    override = status.get("relay_override")
    if isinstance(override, str):
        text += _(" (manual override: {override})").format(override=_text(override))
    return text


def _schedules(schedules: Any) -> str:
    if not isinstance(schedules, dict):
        return "?"
    if not schedules:
        return _("none")
    return ", ".join(
        f"{_text(sid)} v{_text(version)}" for sid, version in sorted(schedules.items())
    )


def _clock_synced(synced: Any) -> str:
    if synced is True:
        return _("synchronised")
    if synced is False:
        return _("NOT synchronised (times shown come from an unsynchronised clock)")
    return "?"


def _cache(cache: Any) -> str:
    if not isinstance(cache, dict):
        return "?"
    size, files, missing = cache.get("bytes"), cache.get("files"), cache.get("missing")
    text = _size(size) if _is_number(size) else "?"
    if _is_number(files):
        plural = "" if files == 1 else "s"
        text += " " + _("in {count} file{plural}").format(count=files, plural=plural)
    if _is_number(missing):
        text += ", " + _("{count} missing").format(count=missing)
        text += _(" (still to fetch)") if missing else ""
    return text


def _faults(faults: Any) -> str:
    if faults is None:
        return _("none")
    if isinstance(faults, list):
        return ", ".join(_text(f) for f in faults) or _("none")
    if isinstance(faults, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in sorted(faults.items())) or _("none")
    return _text(faults)


# --- small helpers ---------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if value is None:
        return "?"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    # A title is at most 2048 characters and may hold anything printable: keep one line. The
    # link's error quotes the network and the broker: no control character reaches the
    # terminal (an escape sequence could rewrite what the technician reads).
    return one_line(text, 200) or "?"


def _clock_time(utc: float, tz: tzinfo) -> str:
    try:
        return datetime.fromtimestamp(utc, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, OSError, ValueError):
        return "?"


def _ago(seconds: float) -> str:
    if seconds < -1:
        return _("{duration} in the future (clock?)").format(duration=_duration(-seconds))
    return _("{duration} ago").format(duration=_duration(max(0.0, seconds)))


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return _("{n} s").format(n=whole)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return _join(_("{n} min").format(n=minutes), secs and _("{n} s").format(n=secs))
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return _join(_("{n} h").format(n=hours), minutes and _("{n} min").format(n=minutes))
    days, hours = divmod(hours, 24)
    return _join(_("{n} d").format(n=days), hours and _("{n} h").format(n=hours))


def _join(larger: str, smaller: str | int) -> str:
    """``1 min 40 s``, or ``1 min`` when the smaller unit is 0."""
    return f"{larger} {smaller}" if smaller else larger


def _size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns

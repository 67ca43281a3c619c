"""Schedule documents and when their entries occur.

Entries are weekday + local time in the document's IANA time zone, optionally bounded by local
dates. Occurrences are computed from a UTC instant with ``zoneinfo``; nothing here reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from receiver.core import commands, reasons
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.vocabulary import Priority

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_ENTRIES: Final = 200
DATE_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME_PATTERN: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
ENTRY_FIELDS: Final = frozenset(
    {
        "id",
        "days",
        "at",
        "priority",
        "volume",
        "valid_from",
        "valid_until",
        "source",
        "max_duration_s",
    }
)


@record
class Entry:
    id: str
    days: frozenset[int]  # 0 = Monday
    at_minute: int  # minutes after local midnight
    priority: Priority
    volume: int | None
    valid_from: date | None
    valid_until: date | None
    files: tuple[commands.MediaFile, ...]
    stream_url: str | None
    max_duration_s: int

    @property
    def title(self) -> str:
        return self.files[0].title if self.files else (self.stream_url or self.id)


@record
class Schedule:
    id: str
    version: int
    iat: float
    exp: float
    env: str
    aud: tuple[str, ...]
    tz: str
    entries: tuple[Entry, ...]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


@record
class Occurrence:
    """One planned play of an entry: its key is unique per schedule, entry and local date."""

    key: str
    schedule_id: str
    entry: Entry
    start_utc: float

    @property
    def end_utc(self) -> float:
        return self.start_utc + self.entry.max_duration_s


def parse_schedule(doc: Any) -> Schedule:
    """Validate a decoded schedule payload: header faults ``malformed``, entries ``bad_body``."""
    header = commands.parse_header(doc, document_fields=frozenset({"version", "tz", "entries"}))
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise Rejection(reasons.MALFORMED, "version must be a positive integer", header.id)
    tz = doc.get("tz")
    try:
        if not isinstance(tz, str) or len(tz) > 64:
            raise ValueError(tz)
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise Rejection(reasons.BAD_BODY, "tz is not a known IANA time zone", header.id) from exc
    entries = doc.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise Rejection(reasons.BAD_BODY, f"entries must list 0 to {MAX_ENTRIES}", header.id)
    try:
        parsed = tuple(parse_entry(entry) for entry in entries)
    except Rejection as rejection:
        raise Rejection(rejection.reason, rejection.detail, header.id) from rejection
    if len({e.id for e in parsed}) != len(parsed):
        raise Rejection(reasons.BAD_BODY, "two entries share an id", header.id)
    return Schedule(header.id, version, header.iat, header.exp, header.env, header.aud, tz, parsed)


def parse_entry(value: Any) -> Entry:
    """One schedule entry, as the receiver reads it (``bad_body`` if it cannot)."""
    if not isinstance(value, dict) or set(value) - ENTRY_FIELDS:
        raise Rejection(reasons.BAD_BODY, "an entry has unknown or missing fields")
    entry_id = value.get("id")
    if not isinstance(entry_id, str) or not commands.MESSAGE_ID_PATTERN.fullmatch(entry_id):
        raise Rejection(reasons.BAD_BODY, "an entry id is missing or invalid")
    days = value.get("days")
    if (
        not isinstance(days, list)
        or not days
        or not all(d in DAYS for d in days)
        or len(set(days)) != len(days)
    ):
        raise Rejection(
            reasons.BAD_BODY, f"entry {entry_id}: days must list some of {', '.join(DAYS)} once"
        )
    at = value.get("at")
    match = TIME_PATTERN.fullmatch(at) if isinstance(at, str) else None
    if match is None:
        raise Rejection(reasons.BAD_BODY, f"entry {entry_id}: at must be HH:MM")
    play = commands.parse_play_body(
        {k: value[k] for k in ("priority", "source", "volume", "max_duration_s") if k in value}
    )
    if play.start_at is not None or play.repeat != 1:
        raise Rejection(reasons.BAD_BODY, f"entry {entry_id}: no start_at or repeat in entries")
    valid_from = _date(value, entry_id, "valid_from")
    valid_until = _date(value, entry_id, "valid_until")
    if valid_from and valid_until and valid_until < valid_from:
        raise Rejection(reasons.BAD_BODY, f"entry {entry_id}: valid_until before valid_from")
    return Entry(
        id=entry_id,
        days=frozenset(DAYS.index(d) for d in days),
        at_minute=int(match.group(1)) * 60 + int(match.group(2)),
        priority=play.priority,
        volume=play.volume,
        valid_from=valid_from,
        valid_until=valid_until,
        files=play.files,
        stream_url=play.stream_url,
        max_duration_s=play.max_duration_s,
    )


def _date(entry: dict[str, Any], entry_id: str, what: str) -> date | None:
    if what not in entry:
        return None
    value = entry[what]
    try:
        if not isinstance(value, str) or not DATE_PATTERN.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise Rejection(reasons.BAD_BODY, f"entry {entry_id}: {what} must be YYYY-MM-DD") from exc


def occurrences(schedule: Schedule, from_utc: float, to_utc: float) -> Iterator[Occurrence]:
    """Every occurrence whose window overlaps [from_utc, to_utc), in start order."""
    zone = schedule.zone
    longest = max((e.max_duration_s for e in schedule.entries), default=0)
    first = datetime.fromtimestamp(from_utc - longest, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(to_utc, zone).date() + timedelta(days=1)
    found: list[Occurrence] = []
    day = first
    while day <= last:
        for entry in schedule.entries:
            if day.weekday() not in entry.days:
                continue
            if (entry.valid_from and day < entry.valid_from) or (
                entry.valid_until and day > entry.valid_until
            ):
                continue
            hour, minute = divmod(entry.at_minute, 60)
            start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).timestamp()
            if start < to_utc and start + entry.max_duration_s > from_utc:
                key = f"{schedule.id}/{entry.id}/{day.isoformat()}"
                found.append(Occurrence(key, schedule.id, entry, start))
        day += timedelta(days=1)
    yield from sorted(found, key=lambda o: (o.start_utc, o.key))

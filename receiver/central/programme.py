"""Programmes people can write: a YAML source turned into a schedule document, and read back.

The source says what a person means (weekdays, a local time, a title, a priority, a local file
or a URL); :func:`compile_source` makes the schedule payload, computing each file's ``sha256``
and ``size`` from the local copy (or by fetching the URL once). A source problem is named by its
path (``entries[2].file: no such file``). :func:`warnings` finds entries whose windows overlap
and times that do not exist in the zone (a daylight-saving gap); :func:`diff` compares two
payloads by entry id; :func:`describe` prints a retained programme and its next occurrences.

Entry ids default to the title (``ban-tin-sang``), so re-timing an entry keeps its identity;
two entries with one title get their time appended. Source format (every key but ``entries``
has a default)::

    id: morning            # schedule id
    version: 4             # above the one the group holds
    tz: Asia/Ho_Chi_Minh
    media_url: https://media.example.vn/c07873/   # where devices fetch local files by name
    entries:
      - title: Bản tin sáng
        days: weekdays     # or every day, weekend, mon-fri, or a list: [mon, wed, fri]
        at: "06:30"
        priority: normal   # normal, priority, emergency
        file: media/ban-tin-sang.mp3   # or url: https://... (fetched once for its hash)
        max_duration: 30m  # seconds, or 30m / 1h
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from receiver.central.inputs import InputError, why, yaml_error
from receiver.core import schedule as core_schedule
from receiver.core import urls
from receiver.core.reasons import Rejection

DAY_WORDS: Final = {
    "weekdays": ["mon", "tue", "wed", "thu", "fri"],
    "weekend": ["sat", "sun"],
    "every day": list(core_schedule.DAYS),
    "daily": list(core_schedule.DAYS),
}
ENTRY_KEYS: Final = frozenset(
    {
        "id",
        "title",
        "days",
        "at",
        "priority",
        "volume",
        "file",
        "url",
        "stream",
        "max_duration",
        "valid_from",
        "valid_until",
    }
)
SOURCE_KEYS: Final = frozenset({"id", "version", "tz", "media_url", "entries"})
# Words people write for a key, and the key they mean.
MEANT: Final = {
    "time": "at",
    "hour": "at",
    "day": "days",
    "weekdays": "days",
    "duration": "max_duration",
    "max_duration_s": "max_duration",
    "level": "priority",
    "name": "title",
    "path": "file",
}
DEFAULT_MAX_DURATION_S: Final = 3600
FETCH_TIMEOUT_S: Final = 30.0


def _duration(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h)?\s*", str(value))
    if match is None:
        raise InputError(f"{where}: {value!r} is not a duration (seconds, or 30m, 1h)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]


def _at(value: Any, where: str) -> str:
    # An unquoted 06:30 arrives as the text written (_UniqueKeyLoader), not YAML 1.1's 390; a
    # number without a colon (630, 6) is no time: guessing would play at 10:30 or 00:06.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise InputError(f'{where}: {value!r} is not a local time: write it HH:MM, e.g. "06:30"')
    text = str(value).strip()
    match = re.fullmatch(r"(\d{1,2})[:h](\d{2})", text)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise InputError(f"{where}: {value!r} is not a local time HH:MM (00:00 to 23:59)")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


DAY_NAMES: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(word: str, where: str) -> int:
    """The index in the week of ``mon``, ``Monday``, ``thurs``: a day's name or its start (three
    letters at least); anything else is named, never cut to three letters and guessed."""
    text = word.strip().lower()
    for index, name in enumerate(DAY_NAMES):
        if len(text) >= 3 and name.startswith(text):
            return index
    raise InputError(
        f"{where}: {word.strip()!r} is not a day: {', '.join(core_schedule.DAYS)}, a range "
        "such as mon-fri, or weekdays, weekend, daily"
    )


def _days(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in DAY_WORDS:
            return list(DAY_WORDS[word])
        value = [part for part in re.split(r"[\s,]+", word) if part]
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: list some of {', '.join(core_schedule.DAYS)} (or weekdays)")
    chosen: set[int] = set()
    for item in value:
        first, dash, last = str(item).partition("-")
        if not dash:
            chosen.add(_day(first, where))
            continue
        start, end = _day(first, where), _day(last, where)
        span = (end - start) % 7  # fri-mon wraps over the weekend
        chosen.update((start + step) % 7 for step in range(span + 1))
    return [core_schedule.DAYS[index] for index in sorted(chosen)]


def _slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text.replace("đ", "d").replace("Đ", "D"))
    ascii_only = plain.encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_only).strip("-")[:40] or "entry"


def _pin_local(path: Path, where: str) -> tuple[str, int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{where}: {path}: no such file (missing media)") from exc
    except OSError as exc:
        raise InputError(f"{where}: {path}: cannot read it ({exc.strerror or exc})") from exc
    if not data:
        raise InputError(f"{where}: {path}: the file is empty")
    return hashlib.sha256(data).hexdigest(), len(data)


def _pin_url(url: str, where: str) -> tuple[str, int]:
    # Checked before fetching: urllib would read a file:// URL from this machine, or try FTP.
    try:
        urls.check_url(url, ("http", "https"), ())
    except urls.UrlRefused as refused:
        if not refused.detail.endswith("is not on the allowlist"):  # that is each board's
            raise InputError(f"{where}: {refused.detail} (every receiver refuses it)") from None
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                size += len(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"{where}: cannot fetch {url} to pin it ({reason})") from exc
    if size == 0:
        raise InputError(f"{where}: {url} is empty")
    return digest.hexdigest(), size


def _entry(raw: Any, index: int, base: Path, media_url: str | None) -> dict[str, Any]:
    where = f"entries[{index}]"
    if not isinstance(raw, dict):
        raise InputError(f"{where}: an entry is a mapping (title, days, at, file or url, ...)")
    unknown = sorted(set(map(str, raw)) - ENTRY_KEYS)
    if unknown:
        key = unknown[0]
        missing = [k for k in ("days", "at") if k not in raw]  # most likely what was meant
        meant = (
            MEANT.get(key)
            or next(iter(difflib.get_close_matches(key, missing, 1, cutoff=0.0)), None)
            or next(iter(difflib.get_close_matches(key, ENTRY_KEYS, 1)), None)
        )
        hint = f"did you mean {meant}?" if meant else f"known: {', '.join(sorted(ENTRY_KEYS))}"
        raise InputError(f"{where}.{key}: not a known key; {hint}")
    for key in ("days", "at"):
        if key not in raw:
            raise InputError(f"{where}.{key}: is missing")
    title = str(raw.get("title") or "").strip()
    at = _at(raw["at"], f"{where}.at")
    entry: dict[str, Any] = {
        "id": str(raw.get("id") or _slug(title or f"entry-{at.replace(':', '')}")),
        "days": _days(raw["days"], f"{where}.days"),
        "at": at,
        "priority": str(raw.get("priority", "normal")),
        "max_duration_s": _duration(
            raw.get("max_duration", DEFAULT_MAX_DURATION_S), f"{where}.max_duration"
        ),
    }
    if "volume" in raw:
        entry["volume"] = raw["volume"]
    for key in ("valid_from", "valid_until"):
        if key in raw:
            entry[key] = str(raw[key])
    sources = [k for k in ("file", "url", "stream") if k in raw]
    if "stream" in raw:
        if sources != ["stream"]:
            raise InputError(f"{where}: a stream entry has no file or url")
        entry["source"] = {"stream": {"url": str(raw["stream"])}}
        return entry
    if not sources:
        raise InputError(f"{where}: give file (a local copy) or url (fetched once) or stream")
    if "file" in raw:
        local = Path(str(raw["file"]))
        local = local if local.is_absolute() else base / local
        sha256, size = _pin_local(local, f"{where}.file")
        url = str(raw.get("url") or "")
        if not url:
            if not media_url:
                raise InputError(
                    f"{where}.url: give the URL devices fetch {local.name} from "
                    "(or media_url at the top)"
                )
            url = media_url.rstrip("/") + "/" + local.name
    else:
        url = str(raw["url"])
        sha256, size = _pin_url(url, f"{where}.url")
    media: dict[str, Any] = {"url": url, "sha256": sha256, "size": size}
    if title:
        media["title"] = title
    entry["source"] = {"files": [media]}
    return entry


def _distinct_ids(entries: list[dict[str, Any]], raws: list[Any]) -> None:
    """Ids made from titles stay the same when an entry is re-timed; two entries with one title
    are told apart by their time."""
    made = [i for i, raw in enumerate(raws) if isinstance(raw, dict) and not raw.get("id")]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["id"]] = counts.get(entry["id"], 0) + 1
    for index in made:
        entry = entries[index]
        if counts[entry["id"]] > 1:
            entry["id"] = f"{entry['id']}-{entry['at'].replace(':', '')}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last one,
    so a pasted ``entries:`` silently dropped the list above it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_sexagesimal_as_text(self, node: yaml.ScalarNode) -> int | str:
        """``06:30`` as written: YAML 1.1 reads it as the base-60 integer 390."""
        text = str(self.construct_scalar(node))
        return text if ":" in text else int(self.construct_yaml_int(node))


_UniqueKeyLoader.add_constructor(
    "tag:yaml.org,2002:int", _UniqueKeyLoader.construct_sexagesimal_as_text
)


def reads_as_yaml(path: Path) -> bool:
    """Whether ``path`` (not JSON) is a YAML mapping in block style, as a programme is written:
    a JSON document with a slip in it (a comma too many) may read as a YAML flow mapping, and is
    not one written in YAML."""
    try:
        text = path.read_text(encoding="utf-8")
        source = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(source, dict) and not text.lstrip().startswith(("{", "["))


def compile_source(path: Path) -> dict[str, Any]:
    """The YAML programme at ``path`` as a schedule document's fields (id, version, tz, entries)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({why(exc)})") from exc
    try:
        source = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise yaml_error(path, text, exc) from exc
    if isinstance(source, dict):
        unknown = sorted(set(map(str, source)) - SOURCE_KEYS)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(SOURCE_KEYS), 1)
            known = ", ".join(sorted(SOURCE_KEYS))
            hint = f"did you mean {close[0]}?" if close else f"known: {known}"
            raise InputError(f"{path}: {key}: not a known key; {hint}")
    if not isinstance(source, dict) or not isinstance(source.get("entries"), list):
        raise InputError(f"{path}: a programme is a mapping with an 'entries' list")
    tz = str(source.get("tz", "Asia/Ho_Chi_Minh"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"{path}: tz: {tz!r} is not a known IANA time zone name") from exc
    media_url = source.get("media_url")
    try:
        entries = [
            _entry(raw, index, path.parent, str(media_url) if media_url else None)
            for index, raw in enumerate(source["entries"])
        ]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    _distinct_ids(entries, source["entries"])
    doc: dict[str, Any] = {"tz": tz, "entries": entries}
    for key in ("id", "version"):
        if key in source:
            doc[key] = source[key]
    return doc


def warnings(payload: dict[str, Any]) -> Iterator[str]:
    """Overlapping windows on a shared day, and local times a daylight-saving gap skips."""
    entries = [e for e in payload.get("entries", []) if isinstance(e, dict)]
    for i, first in enumerate(entries):
        for j in range(i + 1, len(entries)):
            second = entries[j]
            shared = set(first.get("days", [])) & set(second.get("days", []))
            if not shared:
                continue
            a, b = _minute(first), _minute(second)
            a_end, b_end = a + first["max_duration_s"] // 60, b + second["max_duration_s"] // 60
            if a < b_end and b < a_end:
                yield (
                    f"entries[{i}] ({first['id']} at {first['at']}) and entries[{j}] "
                    f"({second['id']} at {second['at']}) overlap on "
                    f"{', '.join(d for d in core_schedule.DAYS if d in shared)} within their "
                    "max_duration: the later one waits or preempts by priority"
                )
    yield from _gaps(payload, entries)


def _minute(entry: dict[str, Any]) -> int:
    hours, minutes = str(entry["at"]).split(":")
    return int(hours) * 60 + int(minutes)


def _gaps(payload: dict[str, Any], entries: list[dict[str, Any]]) -> Iterator[str]:
    zone = ZoneInfo(str(payload["tz"]))
    today = datetime.now(zone).date()
    for index, entry in enumerate(entries):
        hour, minute = divmod(_minute(entry), 60)
        for offset in range(366):
            day = today + timedelta(days=offset)
            local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            back = datetime.fromtimestamp(local.timestamp(), zone)
            if (back.hour, back.minute) != (hour, minute):
                yield (
                    f"entries[{index}].at: {entry['at']} does not exist in {payload['tz']} on "
                    f"{day.isoformat()} (clocks change); it plays at {back:%H:%M} that day"
                )
                break


def _days_written(entry: dict[str, Any]) -> str:
    """An entry's days as written (a retained document is not checked here: any JSON at all)."""
    days = entry.get("days", [])
    return ",".join(map(str, days)) if isinstance(days, list) else str(days)


def _by_id(payload: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    entries = (payload or {}).get("entries")
    if not isinstance(entries, list):
        return {}
    return {str(e.get("id")): e for e in entries if isinstance(e, dict)}


def diff(old: dict[str, Any] | None, new: dict[str, Any], *, compared: bool = True) -> list[str]:
    """What publishing ``new`` changes against ``old`` (the retained payload), entry by entry.

    ``compared`` False: nothing was read from the broker (no ``--host``), so ``new``'s entries
    are listed as added without claiming that nothing is retained there."""
    lines: list[str] = []
    if not compared:
        lines.append(
            f"not compared with what the group holds (no --host): {new['id']} version "
            f"{new['version']}"
        )
    elif old is None:
        lines.append(f"nothing retained: {new['id']} version {new['version']} would be the first")
    elif not old:
        lines.append("an unreadable document is retained: it would be replaced")
    elif old.get("id") != new["id"]:
        lines.append(f"replaces schedule {old.get('id')} v{old.get('version')} by {new['id']}")
    else:
        held = old.get("version")
        verdict = "" if not isinstance(held, int) or held < new["version"] else " (REFUSED: stale)"
        lines.append(f"{new['id']}: version {held} -> {new['version']}{verdict}")
    before, after = _by_id(old), _by_id(new)
    for entry_id, entry in after.items():
        if entry_id not in before:
            lines.append(f"+ {entry_id}: {_days_written(entry)} {entry['at']} (added)")
            continue
        was = before[entry_id]
        if (was.get("days"), was.get("at")) != (entry["days"], entry["at"]):
            lines.append(
                f"~ {entry_id}: {_days_written(was)} {was.get('at')} -> "
                f"{_days_written(entry)} {entry['at']} (retimed)"
            )
        others = sorted(k for k in set(was) | set(entry) if was.get(k) != entry.get(k))
        others = [k for k in others if k not in ("days", "at")]
        if others:
            lines.append(f"~ {entry_id}: {', '.join(others)} changed")
    for entry_id, entry in before.items():
        if entry_id not in after:
            lines.append(f"- {entry_id}: {_days_written(entry)} {entry.get('at')} (removed)")
    if len(lines) == 1 and old:
        lines.append("no entry changes")
    return lines


def describe(
    payload: dict[str, Any] | None,
    now_utc: float,
    *,
    days: int,
    device_holds: dict[str, Any] | None = None,
) -> list[str]:
    """A retained programme in words, and its occurrences in the next ``days`` in local time."""
    if payload is None:
        return ["no schedule is retained"]
    try:
        parsed = core_schedule.parse_schedule(payload)
    except Rejection as rejection:
        return [f"the retained schedule is refused by receivers: {rejection.detail}"]
    lines = [f"{parsed.id} version {parsed.version}, {len(parsed.entries)} entries, tz {parsed.tz}"]
    if device_holds is not None:
        held = device_holds.get(parsed.id)
        if held != parsed.version:
            lines.append(f"the device holds version {held or 'none'} of {parsed.id}")
    zone = parsed.zone
    found = list(core_schedule.occurrences(parsed, now_utc, now_utc + days * 86400.0))
    if not found:
        lines.append(f"no occurrence in the next {days} days")
    for occurrence in found:
        start = datetime.fromtimestamp(occurrence.start_utc, zone)
        entry = occurrence.entry
        lines.append(f"{start:%a %Y-%m-%d %H:%M}  {entry.priority:9} {entry.title}  ({entry.id})")
    return lines

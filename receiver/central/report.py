"""``receiver-admin report``: proof of play, per device and local day, from the collected events.

Reads the collector's database (:mod:`receiver.central.collector`). Each ``started`` event is
one row: its title and level (from the device's state while it played, or from the schedule
entry it belongs to), the planned start (a schedule occurrence's; a command has none), the
actual start, the duration until the item's end event, and how it ended (finished, stopped,
preempted, failed with the reason). Refused commands and failures without a start are rows too,
and so is every period the device was offline. As CSV (``--csv``) or a readable table; the
headers in English or Vietnamese (``--lang vi``). The CSV's two time columns name their zone in
their headers (``Planned (Asia/Ho_Chi_Minh, UTC+07:00)``): the file is what a province archives
and an auditor reads, without the summary the table prints on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from receiver.central.inputs import InputError
from receiver.central.reports import suspect_summary
from receiver.core.record import record
from receiver.terminal import one_line

END_KINDS: Final = ("finished", "stopped", "preempted", "failed")
HEADERS: Final = {
    "en": (
        "Device",
        "Day",
        "Title",
        "Level",
        "Planned",
        "Started",
        "Duration",
        "Outcome",
        "Why",
    ),
    "vi": (
        "Thiết bị",
        "Ngày",
        "Nội dung",
        "Mức ưu tiên",
        "Giờ dự kiến",
        "Giờ phát",
        "Thời lượng",
        "Kết quả",
        "Lý do",
    ),
}
TIME_COLUMNS: Final = (4, 5)  # Planned, Started: local clock times, in the report's zone
SUMMARY: Final = {  # {tz}: the zone_label, ``Asia/Ho_Chi_Minh, UTC+07:00``
    "en": "{count} rows, {first} to {last}, times in {tz}",
    "vi": "{count} dòng, từ {first} đến {last}, giờ theo {tz}",
}
WORDS: Final = {
    "vi": {
        "finished": "đã phát xong",
        "stopped": "bị dừng",
        "preempted": "bị ngắt bởi bản tin ưu tiên",
        "failed": "lỗi",
        "rejected": "bị từ chối",
        "offline": "mất kết nối",
        "playing": "đang phát",
        "normal": "thường",
        "priority": "ưu tiên",
        "emergency": "khẩn cấp",
    }
}


@record
class ReportRow:
    device: str
    day: date
    title: str
    level: str
    planned_utc: float | None
    started_utc: float | None
    duration_s: float | None
    outcome: str
    why: str
    sort_utc: float


def _schedules(db: sqlite3.Connection) -> dict[tuple[str, str], dict[str, Any]]:
    """(schedule id, entry id) -> the entry of the newest version that has it, with its tz."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for sid, tz, payload in db.execute("SELECT id, tz, payload FROM schedules ORDER BY version"):
        for entry in json.loads(payload).get("entries", []):
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                found[(sid, entry["id"])] = {**entry, "tz": tz}
    return found


def _planned(ref: str, entries: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """A schedule occurrence's ref is schedule/entry/YYYY-MM-DD: its entry and planned start."""
    parts = ref.split("/")
    if len(parts) != 3 or (parts[0], parts[1]) not in entries:
        return None
    entry = entries[(parts[0], parts[1])]
    try:
        day = date.fromisoformat(parts[2])
        hour, minute = (int(x) for x in str(entry["at"]).split(":"))
        zone = ZoneInfo(entry["tz"])
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return None
    start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).timestamp()
    files = entry.get("source", {}).get("files") or [{}]
    title = files[0].get("title") or entry.get("source", {}).get("stream", {}).get("url")
    return {"start": start, "title": title or entry["id"], "priority": entry.get("priority")}


def rows(
    db: sqlite3.Connection, zone: ZoneInfo, first: date, last: date, device: str | None = None
) -> Iterator[ReportRow]:
    """Every report row whose local day is in [first, last], by device then time.

    One device at a time (its rows come from the tables' primary keys), so memory stays that
    of one device's month whatever the size of the fleet.
    """
    lo = datetime(first.year, first.month, first.day, tzinfo=zone).timestamp()
    end_day = last + timedelta(days=1)
    hi = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone).timestamp()
    entries = _schedules(db)
    plans: dict[str, dict[str, Any] | None] = {}

    def planned(ref: str) -> dict[str, Any] | None:
        if ref not in plans:
            plans[ref] = _planned(ref, entries)
        return plans[ref]

    if device is not None:
        devices = [device]
    else:
        devices = [
            name
            for (name,) in db.execute(
                "SELECT device FROM events UNION SELECT device FROM states ORDER BY 1"
            )
        ]
    for name in devices:
        found = list(_device_rows(db, zone, lo, hi, device=name, planned=planned))
        found.extend(_offline_rows(db, zone, lo, hi, name))
        found.sort(key=lambda r: r.sort_utc)
        yield from found


def _device_rows(
    db: sqlite3.Connection,
    zone: ZoneInfo,
    lo: float,
    hi: float,
    *,
    device: str,
    planned: Callable[[str], dict[str, Any] | None],
) -> Iterator[ReportRow]:
    titles: dict[str, tuple[str | None, str | None]] = {}
    for ref, title, priority in db.execute(
        "SELECT playing_ref, playing_title, playing_priority FROM states "
        "WHERE device = ? AND ts_utc >= ? AND ts_utc < ? AND playing_ref IS NOT NULL",
        (device, lo - 86400, hi + 86400),
    ):
        titles.setdefault(ref, (title, priority))
    events = db.execute(
        "SELECT n, ts_utc, kind, ref, reason, detail FROM events "
        "WHERE device = ? AND ts_utc >= ? AND ts_utc < ? ORDER BY ts_utc, n",
        (device, lo, hi + 86400),
    ).fetchall()
    open_items: dict[str, int] = {}
    ended: dict[int, tuple[str, float, str]] = {}  # the started event's n -> how it ended
    ended_refs: set[str] = set()
    for n, ts, kind, ref, reason, detail in events:
        if kind == "started" and ref:
            open_items[ref] = n
        elif kind in END_KINDS and ref and ref in open_items:
            ended[open_items.pop(ref)] = (kind, ts, reason or detail or "")
            ended_refs.add(ref)
    for n, ts, kind, ref, reason, detail in events:
        if ts is None or ts >= hi:
            continue
        day = datetime.fromtimestamp(ts, zone).date()
        if kind == "started" and ref:
            plan = planned(ref) or {}
            title, priority = titles.get(ref, (None, None))
            end = ended.get(n)
            yield ReportRow(
                device=device,
                day=day,
                title=title or plan.get("title") or ref,
                level=priority or plan.get("priority") or "?",
                planned_utc=plan.get("start"),
                started_utc=ts,
                duration_s=(end[1] - ts) if end else None,
                outcome=end[0] if end else "playing",
                why=end[2] if end and end[0] != "finished" else "",
                sort_utc=ts,
            )
        elif kind == "rejected" or (kind == "failed" and ref not in ended_refs):
            plan = planned(ref or "") or {}
            yield ReportRow(
                device=device,
                day=day,
                title=plan.get("title") or ref or "-",
                level=plan.get("priority") or "-",
                planned_utc=plan.get("start"),
                started_utc=None,
                duration_s=None,
                outcome=kind,
                why=": ".join(x for x in (reason, detail) if x),
                sort_utc=ts,
            )


def _offline_rows(
    db: sqlite3.Connection, zone: ZoneInfo, lo: float, hi: float, device: str
) -> Iterator[ReportRow]:
    """Offline periods from the state transitions: from an offline state to the next online."""
    went: float | None = None
    previous = 1
    for ts, online in db.execute(
        "SELECT ts_utc, online FROM states WHERE device = ? AND ts_utc < ? ORDER BY ts_utc",
        (device, hi),
    ):
        if not online and previous:
            went = ts
        elif online and went is not None:
            if ts > lo:
                yield from _offline(device, zone, max(went, lo), min(ts, hi))
            went = None
        previous = online
    if went is not None:
        yield from _offline(device, zone, max(went, lo), None, until=hi)


def _offline(
    dev: str, zone: ZoneInfo, start: float, end: float | None, *, until: float | None = None
) -> Iterator[ReportRow]:
    """One row per local day of an offline period (``end`` None: still offline at ``until``)."""
    last = end if end is not None else until
    while True:
        day = datetime.fromtimestamp(start, zone).date()
        following = day + timedelta(days=1)
        midnight = datetime(following.year, following.month, following.day, tzinfo=zone)
        if last is None or last <= start:
            return
        stop = min(last, midnight.timestamp())
        whole = end is not None or stop < last
        yield ReportRow(
            device=dev,
            day=day,
            title="-",
            level="-",
            planned_utc=None,
            started_utc=start,
            duration_s=(stop - start) if whole else None,
            outcome="offline",
            why="" if whole else "still offline",
            sort_utc=start,
        )
        start = stop
        if stop >= last:
            return


def _clock(utc: float | None, zone: ZoneInfo) -> str:
    return "-" if utc is None else datetime.fromtimestamp(utc, zone).strftime("%H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def cells(row: ReportRow, zone: ZoneInfo, lang: str) -> tuple[str, ...]:
    words = WORDS.get(lang, {})
    return (
        row.device,
        row.day.isoformat(),
        row.title,
        words.get(row.level, row.level),
        _clock(row.planned_utc, zone),
        _clock(row.started_utc, zone),
        _duration(row.duration_s),
        words.get(row.outcome, row.outcome),
        row.why,
    )


def zone_label(zone: ZoneInfo, day: date) -> str:
    """``Asia/Ho_Chi_Minh, UTC+07:00``: the zone's name and its offset at the start of ``day``.

    A zone that changes its offset inside the report's period (summer time) has another offset
    on later days: the name is what holds for every row, the offset is a reader's help.
    """
    offset = datetime(day.year, day.month, day.day, tzinfo=zone).utcoffset() or timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    hours, rest = divmod(abs(minutes), 60)
    return f"{zone.key}, UTC{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"


def csv_headers(lang: str, zone: ZoneInfo, first: date) -> tuple[str, ...]:
    """The headers, the time columns naming their zone: a CSV has no summary line to say it."""
    label = zone_label(zone, first)
    return tuple(
        f"{name} ({label})" if i in TIME_COLUMNS else name for i, name in enumerate(HEADERS[lang])
    )


def write_csv(
    out: TextIO, found: Iterable[ReportRow], zone: ZoneInfo, lang: str, first: date
) -> int:
    writer = csv.writer(out)
    writer.writerow(csv_headers(lang, zone, first))
    count = 0
    for row in found:
        writer.writerow(cells(row, zone, lang))
        count += 1
    return count


def write_table(out: TextIO, found: Iterable[ReportRow], zone: ZoneInfo, lang: str) -> int:
    """The readable table keeps its short headers: its summary on stderr names the zone and its
    offset (:func:`zone_label`)."""
    # The database holds what the network said as it said it: each cell one line of text.
    lines = [HEADERS[lang]] + [
        tuple(one_line(cell, 200) for cell in cells(row, zone, lang)) for row in found
    ]
    widths = [min(40, max(len(line[i]) for line in lines)) for i in range(len(HEADERS[lang]))]
    for line in lines:
        text = "  ".join(
            (c if len(c) <= w else c[: w - 1] + "…").ljust(w)
            for c, w in zip(line, widths, strict=True)
        )
        out.write(text.rstrip() + "\n")
    return len(lines) - 1


def _day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"{flag} {text!r}: give a date YYYY-MM-DD") from exc


def report_command(args: argparse.Namespace) -> int:
    path = Path(args.db)
    if not path.is_file():
        raise InputError(f"--db {path}: no such file (receiver-admin collect makes it)")
    try:
        zone = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"--tz {args.tz!r}: not a known IANA time zone") from exc
    today = datetime.now(zone).date()
    # The flags as typed (--from or --since, --to or --until): the messages name them so.
    since_flag, until_flag = args.since_flag, args.until_flag
    first = _day(args.since, since_flag) if args.since else today.replace(day=1)
    last = _day(args.until, until_flag) if args.until else today
    if last < first and not args.until:
        raise InputError(
            f"{since_flag} {first} is after today ({today}), the last day when --to/--until "
            "is not given"
        )
    if last < first:
        raise InputError(f"{until_flag} {last} is before {since_flag} {first}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = rows(db, zone, first, last, args.device)
        if args.csv:
            count = write_csv(sys.stdout, found, zone, args.lang, first)
        else:
            count = write_table(sys.stdout, found, zone, args.lang)
    except sqlite3.DatabaseError as exc:
        raise InputError(f"--db {path}: not a collector database ({exc})") from exc
    finally:
        db.close()
    if not args.csv:
        summary = SUMMARY.get(args.lang, SUMMARY["en"])
        label = zone_label(zone, first)  # as the CSV headers name it
        print(summary.format(count=count, first=first, last=last, tz=label), file=sys.stderr)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        suspect = suspect_summary(db, args.device)
        unknown = args.device is not None and count == 0 and not _heard_of(db, args.device)
        known = _devices(db) if unknown else []
    if suspect is not None:
        print(suspect, file=sys.stderr)
    if unknown:
        # A typo in --device looks like a device that played nothing: say which it is.
        shown = ", ".join(one_line(d, 64) for d in known[:10]) + (
            ", ..." if len(known) > 10 else ""
        )
        print(
            f"receiver-admin: no report from {args.device} in {path} at all: is the device id "
            f"right? (it holds {shown or 'no device'})",
            file=sys.stderr,
        )
        return 1
    return 0


def _heard_of(db: sqlite3.Connection, device: str) -> bool:
    found = db.execute(
        "SELECT 1 FROM events WHERE device = ? UNION ALL SELECT 1 FROM states WHERE device = ? "
        "LIMIT 1",
        (device, device),
    )
    return found.fetchone() is not None


def _devices(db: sqlite3.Connection) -> list[str]:
    found = db.execute("SELECT device FROM events UNION SELECT device FROM states ORDER BY 1")
    return [device for (device,) in found]


class _DayFlag(argparse.Action):
    """Stores the day, and the flag it came with (``--from`` or ``--since``) for the messages."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        if option_string is not None:
            setattr(namespace, f"{self.dest}_flag", option_string)


def add_parser(sub: Any, *, typed_as_report: bool = False) -> None:
    """The ``proof`` subcommand; ``typed_as_report``: the operator typed ``report --db``, and its
    usage and messages say so (``receiver-admin report --db DB ...``), not ``proof``."""
    spelled = "report" if typed_as_report else "proof"
    also = "" if typed_as_report else "also run as receiver-admin report --db DB ...; "
    report = sub.add_parser(
        "proof",
        prog=f"receiver-admin {spelled}",
        help="proof of play per device and day (also: report --db DB)",
        description="Proof of play per device and local day, from the collector's database "
        f"({also}without --db, receiver-admin report asks the devices for their state).",
        add_help=False,  # -h after --db: the usage starts with the words that run it
    )
    report.add_argument("--db", required=True, help="the collector's SQLite file")
    report.add_argument("-h", "--help", action="help", help="show this help message and exit")
    # --since/--until as well: what operators used to journalctl type.
    report.add_argument(
        "--from",
        "--since",
        dest="since",
        action=_DayFlag,
        metavar="DAY",
        help="first local day, YYYY-MM-DD (default: 1st)",
    )
    report.add_argument(
        "--to",
        "--until",
        dest="until",
        action=_DayFlag,
        metavar="DAY",
        help="last local day, YYYY-MM-DD (default: today)",
    )
    report.add_argument("--device", help="one device only")
    report.add_argument("--tz", default="Asia/Ho_Chi_Minh", help="local time zone of the report")
    report.add_argument("--csv", action="store_true", help="CSV instead of a table")
    report.add_argument("--lang", choices=sorted(HEADERS), default="en", help="header language")
    report.set_defaults(func=report_command, since_flag="--from", until_flag="--to")

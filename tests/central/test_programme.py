"""Programmes people can write: a YAML source becomes the signed schedule, and reads back.

The source names weekdays, a local time, a title, a priority and a local file or a URL; the
tool pins each file (sha256 and size from the local copy, or by fetching the URL once), checks
the times, overlaps and media, and ``schedule show`` prints what a group or device holds with
its next plays in local time.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from receiver.central.admin import main
from receiver.core.envelope import parse_envelope
from receiver.core.schedule import parse_schedule
from tests.central.conftest import Secured, Spy, device_state
from tests.lab.web import MediaServer

SOURCE = """\
id: morning
version: 3
tz: Asia/Ho_Chi_Minh
media_url: https://media.example.vn/c07873/
entries:
  - title: Bản tin sáng
    days: weekdays
    at: 06:30
    priority: normal
    file: media/ban-tin-sang.mp3
    max_duration: 30m
  - title: Thông báo khẩn
    days: [sat, sun]
    at: "18:00"
    priority: emergency
    volume: 90
    url: {url}
    max_duration: 600
"""


@pytest.fixture
def media(tmp_path: Path) -> MediaServer:
    served = tmp_path / "served"
    served.mkdir()
    (served / "notice.mp3").write_bytes(b"notice audio" * 100)
    return MediaServer(served)


def write_source(tmp_path: Path, media: MediaServer, text: str = SOURCE) -> Path:
    (tmp_path / "media").mkdir(exist_ok=True)
    (tmp_path / "media" / "ban-tin-sang.mp3").write_bytes(b"morning news" * 50)
    source = tmp_path / "programme.yaml"
    source.write_text(text.format(url=media.url("notice.mp3")), encoding="utf-8")
    return source


def sign(argv: list[str], key: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*argv, "--key", str(key), "--env", "prod", "--aud", "grp:commune-1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_yaml_programme_becomes_the_schedule_a_receiver_takes(
    tmp_path: Path,
    media: MediaServer,
    operator_key: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_source(tmp_path, media)
    try:
        code, out, err = sign(["schedule", "--file", str(source)], operator_key, capsys)
    finally:
        media.close()
    assert code == 0, err
    payload = json.loads(parse_envelope(out.strip().encode()).body)
    schedule = parse_schedule(payload)  # what a receiver does with it
    news, notice = schedule.entries
    assert (schedule.id, schedule.version, schedule.tz) == ("morning", 3, "Asia/Ho_Chi_Minh")
    assert news.days == frozenset(range(5)) and news.at_minute == 6 * 60 + 30
    assert news.max_duration_s == 1800 and news.priority == "normal"
    assert news.files[0].url == "https://media.example.vn/c07873/ban-tin-sang.mp3"
    assert news.files[0].sha256 == hashlib.sha256(b"morning news" * 50).hexdigest()
    assert news.files[0].size == 600
    assert news.title == "Bản tin sáng"
    assert notice.days == frozenset({5, 6}) and notice.volume == 90
    assert notice.files[0].sha256 == hashlib.sha256(b"notice audio" * 100).hexdigest()
    assert [r for r in media.requests if "notice.mp3" in r] == ["GET /notice.mp3 HTTP/1.1"]


@pytest.mark.parametrize(
    "case",
    [
        (("media/ban-tin-sang.mp3", "media/missing.mp3"), "entries[0].file: "),
        (("at: 06:30", "at: 25:10"), "entries[0].at: '25:10' is not a local time HH:MM"),
        (("days: weekdays", "days: [mon, thurs, xyz]"), "entries[0].days: 'xyz' is not a day"),
        (("priority: normal", "priority: urgent"), "entries[0].priority: must be one of"),
        (("tz: Asia/Ho_Chi_Minh", "tz: Asia/Hanoi_City"), "tz: 'Asia/Hanoi_City' is not a known"),
        (
            ("    max_duration: 30m", "    maxduration: 30m"),
            "entries[0].maxduration: not a known key; did you mean max_duration?",
        ),
        (
            ("    url: {url}", "    url: http://127.0.0.1:9/nothing.mp3"),
            "entries[1].url: cannot fetch",
        ),
    ],
)
def test_a_source_problem_is_named_and_nothing_is_signed(
    case: tuple[tuple[str, str], str],
    tmp_path: Path,
    media: MediaServer,
    operator_key: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    change, named = case
    source = write_source(tmp_path, media, SOURCE.replace(*change))
    try:
        code, out, err = sign(["schedule", "--file", str(source)], operator_key, capsys)
    finally:
        media.close()
    assert code == 2
    assert out == ""
    assert named in err
    assert "Traceback" not in err
    if "missing.mp3" in change[1]:
        assert "no such file (missing media)" in err


def test_overlapping_entries_are_warned_about(
    tmp_path: Path, media: MediaServer, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SOURCE.replace("days: [sat, sun]", "days: [fri, sat]").replace('"18:00"', '"06:45"')
    source = write_source(tmp_path, media, text)
    try:
        code, _out, err = sign(["schedule", "--file", str(source)], operator_key, capsys)
    finally:
        media.close()
    assert code == 0
    assert "warning: entries[0] (ban-tin-sang at 06:30) and entries[1]" in err
    assert "overlap on fri" in err


def test_schedule_show_prints_what_the_group_and_device_hold_in_local_time(
    secured: Secured,
    tmp_path: Path,
    media: MediaServer,
    operator_key: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_source(tmp_path, media)
    try:
        code, _out, err = sign(
            ["schedule", "--file", str(source), *secured.login()], operator_key, capsys
        )
    finally:
        media.close()
    assert code == 0, err
    with Spy(secured) as spy:
        spy.publish(
            "loa/v1/dev/loa-001/state",
            device_state("loa-001", time.time(), schedules={"morning": 2}, groups=["commune-1"]),
        )

    assert main(["schedule", "show", "--device", "loa-001", "--days", "7", *secured.login()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "device loa-001 holds: morning v2"
    assert out[1] == "group commune-1 (loa/v1/grp/commune-1/schedule):"
    assert out[2] == "  morning version 3, 2 entries, tz Asia/Ho_Chi_Minh"
    assert out[3] == "  the device holds version 2 of morning"
    plays = out[4:]
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime.now(zone)
    starts = [
        datetime.strptime(" ".join(play.split()[1:3]), "%Y-%m-%d %H:%M").replace(tzinfo=zone)
        for play in plays
    ]
    assert starts == sorted(starts)
    # Five weekday mornings and two weekend evenings start in any 7 days; an occurrence whose
    # window is still open (a morning's 30 minutes) is shown too, so between 06:30 and 07:00
    # on a weekday there is one more, started before now.
    later = [start for start in starts if start > now]
    assert len(later) == 7, plays
    assert len(starts) - len(later) <= 1, plays
    assert all(now - start < timedelta(minutes=30) for start in starts if start <= now), plays
    assert any("06:30  normal    Bản tin sáng" in p for p in plays)
    assert any("18:00  emergency Thông báo khẩn" in p for p in plays)


def test_a_key_is_needed_to_sign_but_not_to_check(
    tmp_path: Path, media: MediaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_source(tmp_path, media, SOURCE.replace("at: 06:30", "at: 6h3"))
    media.close()
    missing_key = tmp_path / "nobody.pem"
    code, _out, err = sign(["schedule", "--file", str(source)], missing_key, capsys)
    assert code == 2
    assert "entries[0].at" in err  # the programme's problem is said before the key's


def test_a_time_a_clock_change_skips_is_warned_about(
    tmp_path: Path, media: MediaServer, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        SOURCE.replace("tz: Asia/Ho_Chi_Minh", "tz: Europe/Berlin")
        .replace("days: weekdays", "days: every day")
        .replace("at: 06:30", 'at: "02:30"')
    )
    source = write_source(tmp_path, media, text)
    try:
        code, _out, err = sign(["schedule", "--file", str(source)], operator_key, capsys)
    finally:
        media.close()
    assert code == 0
    assert "entries[0].at: 02:30 does not exist in Europe/Berlin on " in err
    assert "(clocks change); it plays at 03:30 that day" in err

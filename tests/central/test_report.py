"""Proof of play: what each device played, per local day, from the collector's database."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from receiver.central import collector
from receiver.central.admin import main
from receiver.central.received import parse_device_message
from receiver.central.signing import SigningKey, schedule_payload, sign_schedule
from tests.central.conftest import device_event, device_state

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
SHA = "d" * 64


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=HCM).timestamp()


def entry(entry_id: str, at: str, title: str, priority: str = "normal") -> dict[str, object]:
    media = {"url": f"https://m.example/{entry_id}.mp3", "sha256": SHA, "size": 9, "title": title}
    return {
        "id": entry_id,
        "days": ["mon"],
        "at": at,
        "priority": priority,
        "source": {"files": [media]},
        "max_duration_s": 1800,
    }


@pytest.fixture
def collected(tmp_path: Path) -> Path:
    """A month's database in miniature: Monday 2 March 2026 for loa-001, as collect stores it."""
    path = tmp_path / "events.db"
    db = collector.open_database(path)
    counts = collector.Counts()
    programme = schedule_payload(
        "morning",
        3,
        [entry("news", "06:30", "Bản tin sáng"), entry("weather", "07:00", "Thời tiết")],
        env="prod",
        aud=["grp:c-1"],
    )
    collector.store_schedule(db, sign_schedule(programme, [SigningKey.generate("op")]), counts)

    def event(n: int, at: str, kind: str, **fields: object) -> None:
        raw = device_event("loa-001", n, kind, ts=local(at), **fields)
        message = parse_device_message("loa/v1/dev/loa-001/events", raw)
        assert message is not None
        collector.store_event(db, message, local(at), counts)

    def state(at: str, raw: bytes) -> None:
        message = parse_device_message("loa/v1/dev/loa-001/state", raw)
        assert message is not None
        collector.store_state(db, message, local(at), counts)

    event(1, "2026-03-02T06:30:00.500", "accepted", ref="morning/news/2026-03-02")
    event(2, "2026-03-02T06:30:02", "started", ref="morning/news/2026-03-02")
    event(3, "2026-03-02T06:45:02", "finished", ref="morning/news/2026-03-02")
    event(
        4,
        "2026-03-02T07:00:01",
        "failed",
        ref="morning/weather/2026-03-02",
        reason="fetch_failed",
        detail="HTTP 404",
    )
    event(5, "2026-03-02T09:00:00", "accepted", ref="cmd-77")
    event(6, "2026-03-02T09:00:03", "started", ref="cmd-77")
    state(
        "2026-03-02T09:00:04",
        device_state(
            "loa-001",
            local("2026-03-02T09:00:04"),
            state="playing",
            playing={
                "ref": "cmd-77",
                "title": "Thông báo tiêm chủng",
                "priority": "priority",
                "since": "2026-03-02T02:00:03.000Z",
            },
        ),
    )
    event(7, "2026-03-02T09:01:33", "preempted", ref="cmd-77")
    event(8, "2026-03-02T10:00:00", "rejected", ref="cmd-78", reason="expired")
    state("2026-03-02T12:00:00", b'{"device": "loa-001", "online": false}')
    state("2026-03-02T13:30:00", device_state("loa-001", local("2026-03-02T13:30:00")))
    # Delivered again after a reconnect: stored once.
    event(3, "2026-03-02T06:45:02", "finished", ref="morning/news/2026-03-02")
    assert counts.duplicates == 1
    db.close()
    return path


def test_the_table_says_what_played_what_failed_and_when_offline(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "--db", str(collected), "--from", "2026-03-02", "--to", "2026-03-02"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == [
        "Device",
        "Day",
        "Title",
        "Level",
        "Planned",
        "Started",
        "Duration",
        "Outcome",
        "Why",
    ]
    body = [line.split("  ") for line in lines[1:]]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in body]
    assert rows == [
        [
            "loa-001",
            "2026-03-02",
            "Bản tin sáng",
            "normal",
            "06:30:00",
            "06:30:02",
            "0:15:00",
            "finished",
        ],
        [
            "loa-001",
            "2026-03-02",
            "Thời tiết",
            "normal",
            "07:00:00",
            "-",
            "-",
            "failed",
            "fetch_failed: HTTP 404",
        ],
        [
            "loa-001",
            "2026-03-02",
            "Thông báo tiêm chủng",
            "priority",
            "-",
            "09:00:03",
            "0:01:30",
            "preempted",
        ],
        ["loa-001", "2026-03-02", "cmd-78", "-", "-", "-", "-", "rejected", "expired"],
        ["loa-001", "2026-03-02", "-", "-", "-", "12:00:00", "1:30:00", "offline"],
    ]
    assert "5 rows, 2026-03-02 to 2026-03-02, times in Asia/Ho_Chi_Minh, UTC+07:00" in captured.err


def test_csv_with_vietnamese_headers(collected: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["report", "--db", str(collected), "--from", "2026-03-02", "--to", "2026-03-02"]
    assert main([*argv, "--csv", "--lang", "vi"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == [
        "Thiết bị",
        "Ngày",
        "Nội dung",
        "Mức ưu tiên",
        "Giờ dự kiến (Asia/Ho_Chi_Minh, UTC+07:00)",
        "Giờ phát (Asia/Ho_Chi_Minh, UTC+07:00)",
        "Thời lượng",
        "Kết quả",
        "Lý do",
    ]
    assert table[1][2:8] == [
        "Bản tin sáng",
        "thường",
        "06:30:00",
        "06:30:02",
        "0:15:00",
        "đã phát xong",
    ]
    assert table[3][3] == "ưu tiên" and table[3][7] == "bị ngắt bởi bản tin ưu tiên"
    assert table[5][7] == "mất kết nối"


def test_another_day_or_device_is_empty_and_bad_input_is_said(
    collected: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["report", "--db", str(collected), "--from", "2026-03-03", "--to", "2026-03-03"]) == 0
    )
    assert capsys.readouterr().out.splitlines()[1:] == []
    argv = ["report", "--db", str(collected), "--from", "2026-03-02", "--to", "2026-03-02"]
    assert main([*argv, "--device", "loa-002"]) == 1  # never heard of: said, exit 1
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert main(["report", "--db", str(collected), "--from", "2 March"]) == 2
    assert "--from '2 March': give a date YYYY-MM-DD" in capsys.readouterr().err
    assert main(["report", "--db", str(tmp_path / "none.db")]) == 2
    assert "no such file (receiver-admin collect makes it)" in capsys.readouterr().err
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    assert main(["report", "--db", str(not_db)]) == 2
    assert "not a collector database" in capsys.readouterr().err


def test_without_db_report_is_still_the_report_command(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["report", "--key", str(operator_key), "--env", "prod", "--aud", "dev:loa-001"]) == 0
    )
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["payloadType"] == "application/vnd.loa.command.v1+json"


def test_a_reset_board_numbering_from_1_again_is_kept_and_a_repeat_is_not(tmp_path: Path) -> None:
    db = collector.open_database(tmp_path / "events.db")
    counts = collector.Counts()
    for n, at in (
        (1, "2026-03-01T06:30:00"),
        (2, "2026-03-01T06:45:00"),
        (1, "2026-03-05T07:00:00"),
    ):
        raw = device_event("loa-001", n, "fault", ts=local(at), detail="x")
        message = parse_device_message("loa/v1/dev/loa-001/events", raw)
        assert message is not None
        collector.store_event(db, message, local(at), counts)
        collector.store_event(db, message, local(at), counts)  # delivered twice
    assert (counts.events, counts.duplicates, counts.conflicts) == (3, 3, 0)
    assert db.execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_a_refreshed_unchanged_state_is_kept_once(tmp_path: Path) -> None:
    db = collector.open_database(tmp_path / "events.db")
    counts = collector.Counts()
    start = local("2026-03-01T06:00:00")
    for minute in range(30):  # a state a minute, unchanged but for its time
        raw = device_state("loa-001", start + 60 * minute)
        message = parse_device_message("loa/v1/dev/loa-001/state", raw)
        assert message is not None
        collector.store_state(db, message, start + 60 * minute, counts)
    assert db.execute("SELECT count(*) FROM states").fetchone() == (1,)


def test_an_offline_night_is_split_at_local_midnight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.db"
    db = collector.open_database(path)
    counts = collector.Counts()
    for at, raw in (
        ("2026-03-02T20:00:00", device_state("loa-001", local("2026-03-02T20:00:00"))),
        ("2026-03-02T22:00:00", b'{"device": "loa-001", "online": false}'),
        ("2026-03-03T05:30:00", device_state("loa-001", local("2026-03-03T05:30:00"))),
    ):
        message = parse_device_message("loa/v1/dev/loa-001/state", raw)
        assert message is not None
        collector.store_state(db, message, local(at), counts)
    db.close()
    argv = ["report", "--db", str(path), "--from", "2026-03-02", "--to", "2026-03-03", "--csv"]
    assert main(argv) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [row[1] + " " + row[5] + " " + row[6] for row in table[1:]] == [
        "2026-03-02 22:00:00 2:00:00",
        "2026-03-03 00:00:00 5:30:00",
    ]


def test_a_device_id_the_database_never_heard_of_is_said(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--device loa-0001`` (a typo) printed an empty table, exit 0: a commune filed it."""
    argv = ["report", "--db", str(collected), "--from", "2026-03-01", "--to", "2026-03-31"]
    assert main([*argv, "--device", "loa-0001"]) == 1
    err = capsys.readouterr().err
    assert "no report from loa-0001" in err
    assert "loa-001" in err  # the ids it does hold, to pick from

    assert main([*argv, "--device", "loa-001"]) == 0


def test_the_summary_line_speaks_the_tables_language(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "--db", str(collected), "--from", "2026-03-02", "--to", "2026-03-02"]
    assert main([*argv, "--lang", "vi"]) == 0
    assert (
        "5 dòng, từ 2026-03-02 đến 2026-03-02, giờ theo Asia/Ho_Chi_Minh, UTC+07:00\n"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("tz", "lang", "said"),
    [
        ("UTC", "en", "times in UTC, UTC+00:00\n"),
        ("America/St_Johns", "en", "times in America/St_Johns, UTC-03:30\n"),
        ("Europe/Berlin", "vi", "giờ theo Europe/Berlin, UTC+01:00\n"),
    ],
)
def test_the_tables_summary_names_the_offset_as_the_csv_headers_do(
    collected: Path, capsys: pytest.CaptureFixture[str], tz: str, lang: str, said: str
) -> None:
    """The summary named the zone only, the CSV headers its offset as well: the first day's
    (Berlin is UTC+01:00 on 1 March 2026, UTC+02:00 from the 29th)."""
    argv = ["report", "--db", str(collected), "--from", "2026-03-01", "--to", "2026-04-30"]
    assert main([*argv, "--tz", tz, "--lang", lang]) == 0
    assert said in capsys.readouterr().err


def test_a_first_day_after_today_does_not_blame_a_to_not_given(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--from`` a day ahead, without ``--to``, said "--to <today> is before --from ...": a
    ``--to`` the operator never wrote."""
    ahead = (datetime.now(HCM) + timedelta(days=3)).date()
    assert main(["report", "--db", str(collected), "--from", ahead.isoformat()]) == 2
    err = capsys.readouterr().err
    assert "is before --from" not in err
    assert f"--from {ahead} is after today" in err


@pytest.mark.parametrize(
    ("tz", "label", "started"),
    [
        ("Asia/Ho_Chi_Minh", "Asia/Ho_Chi_Minh, UTC+07:00", "06:30:02"),
        ("UTC", "UTC, UTC+00:00", "23:30:02"),
        ("America/St_Johns", "America/St_Johns, UTC-03:30", "20:00:02"),
    ],
)
def test_the_csv_says_in_its_header_which_zone_its_times_are_in(
    collected: Path, capsys: pytest.CaptureFixture[str], tz: str, label: str, started: str
) -> None:
    """The CSV gave local times without their zone: only the table's summary, on stderr, named
    it, and stderr is not in the file a province archives."""
    argv = ["report", "--db", str(collected), "--from", "2026-03-01", "--to", "2026-03-02"]
    assert main([*argv, "--tz", tz, "--csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0][4:6] == [f"Planned ({label})", f"Started ({label})"]
    news = next(row for row in table[1:] if row[2] == "Bản tin sáng")
    assert news[5] == started


def test_the_header_gives_the_offset_of_the_first_day(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Berlin is UTC+01:00 on 1 March 2026 and UTC+02:00 from the 29th: the first day's offset,
    the zone's name for the rest."""
    argv = ["report", "--db", str(collected), "--from", "2026-03-01", "--to", "2026-04-30"]
    assert main([*argv, "--tz", "Europe/Berlin", "--csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert header[4] == "Planned (Europe/Berlin, UTC+01:00)"


def test_since_and_until_are_from_and_to(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operators used to journalctl type ``--since``/``--until``: it was a usage error."""
    base = ["report", "--db", str(collected), "--csv"]
    assert main([*base, "--from", "2026-03-02", "--to", "2026-03-02"]) == 0
    expected = capsys.readouterr().out
    assert len(expected.splitlines()) == 6
    assert main([*base, "--since", "2026-03-02", "--until", "2026-03-02"]) == 0
    assert capsys.readouterr().out == expected
    assert main([*base, "--since=2026-03-02", "--to", "2026-03-02"]) == 0
    assert capsys.readouterr().out == expected


def test_a_message_names_the_flag_the_operator_typed(
    collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["report", "--db", str(collected)]
    assert main([*base, "--since", "2 March"]) == 2
    assert "receiver-admin: --since '2 March': give a date YYYY-MM-DD" in capsys.readouterr().err
    assert main([*base, "--from", "2026-03-02", "--until", "March"]) == 2
    assert "receiver-admin: --until 'March': give a date YYYY-MM-DD" in capsys.readouterr().err
    assert main([*base, "--since", "2026-03-02", "--until", "2026-03-01"]) == 2
    assert "--until 2026-03-01 is before --since 2026-03-02" in capsys.readouterr().err
    assert main([*base, "--from", "2026-03-02", "--until", "2026-03-01"]) == 2
    assert "--until 2026-03-01 is before --from 2026-03-02" in capsys.readouterr().err
    ahead = (datetime.now(HCM) + timedelta(days=3)).date()
    assert main([*base, "--since", ahead.isoformat()]) == 2
    err = capsys.readouterr().err
    assert f"--since {ahead} is after today" in err
    assert "when --to/--until is not given" in err


def test_the_help_shows_both_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--db", "x.db", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--from DAY, --since DAY first local day" in out
    assert "--to DAY, --until DAY last local day" in out


def test_the_table_prints_what_the_database_holds_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The collector stores what the network said as it said it (a title, a failure's detail):
    the table printed those cells raw, so a terminal escape in a report reached the operator's
    terminal. The CSV keeps them as stored (a spreadsheet is no terminal)."""
    from datetime import date

    from receiver.central.report import ReportRow, write_table

    row = ReportRow(
        device="loa-001",
        day=date(2026, 3, 2),
        title="news\x1b]0;owned\x07",
        level="normal",
        planned_utc=None,
        started_utc=None,
        duration_s=None,
        outcome="failed",
        why="a\x9b2Jb\u202e",
        sort_utc=0.0,
    )
    out = io.StringIO()
    write_table(out, [row], ZoneInfo("Asia/Ho_Chi_Minh"), "en")
    assert not {"\x1b", "\x07", "\x9b", "\u202e"} & set(out.getvalue()), repr(out.getvalue())
    assert "news" in out.getvalue()

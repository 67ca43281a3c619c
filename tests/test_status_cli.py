"""``receiver status``: the status file written by the daemon, read back as a technician would."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from receiver.status import (
    STATUS_FILE,
    StatusError,
    format_status,
    read_status,
    status_path,
    write_status,
)
from receiver.timefmt import rfc3339

ROOT = Path(__file__).resolve().parents[1]
KEY = base64.b64encode(bytes(range(32))).decode()


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "receiver.yaml"
    path.write_text(
        "device_id: loa-25-07873-001\nenv: lab\ngroups: [commune-25-07873]\n"
        "broker:\n  host: 192.0.2.1\n"  # TEST-NET: never reached, status must not try
        f"trust:\n  keys:\n    - {{id: k1, ed25519: '{KEY}', roles: [operator], scopes: ['*']}}\n"
        "storage: {state_dir: state, cache_dir: cache}\n",
        encoding="utf-8",
    )
    return path


def state_message(now: float, **changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "device": "loa-25-07873-001",
        "online": True,
        "ts": rfc3339(now - 12.0),
        "sw": "0.2.0",
        "state": "playing",
        "playing": {
            "ref": "cmd-1772343000000",
            "title": "Bản tin sáng",
            "priority": "priority",
            "since": rfc3339(now - 95.0),
        },
        "volume": 70,
        "relays": {"amp": "on"},
        "schedules": {"morning": 12, "evening": 3},
        "trust_version": 3,
        "clock_synced": True,
        "cache": {"bytes": 3 * 1024 * 1024, "files": 4, "missing": 1},
        "uptime_s": 90061,
        "link": {"up": True, "since": 1.0, "last_error": None, "reconnects": 2},
        "faults": ["amp"],
    }
    state.update(changes)
    return state


def encode(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def run_status(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", "status", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def as_lines(output: str) -> dict[str, str]:
    """label -> value of ``receiver status``'s block (continuation lines left out)."""
    found = {}
    for line in output.splitlines():
        label, value = line[:11].strip(), line[11:]
        if label:
            found[label] = value
    return found


def test_status_prints_the_last_state_and_the_board_health(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    now = time.time()
    write_status(state_dir, encode(state_message(now)))

    result = run_status(config)
    assert result.returncode == 0, result.stderr
    lines = as_lines(result.stdout)
    assert lines["device"] == "loa-25-07873-001"
    updated = re.fullmatch(r"(\d+) s ago \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+07\)", lines["updated"])
    assert updated is not None, lines["updated"]
    assert 12 <= int(updated.group(1)) < 60  # the state was made 12 s before the run
    assert lines["broker"].startswith("connected")
    assert lines["broker"].endswith("2 reconnects")
    assert lines["software"] == "0.2.0"
    assert lines["uptime"] == "1 d 1 h"
    assert lines["playing"].startswith('"Bản tin sáng", priority, ref cmd-1772343000000, since ')
    since = re.search(r"\(1 min (\d+) s ago\)$", lines["playing"])
    assert since is not None, lines["playing"]
    assert int(since.group(1)) >= 35  # sound started 95 s before the state was written
    assert lines["volume"] == "70 %"
    assert lines["relay"] == "amp on"
    assert lines["schedules"] == "evening v3, morning v12"
    assert lines["trust"] == "version 3"
    assert lines["clock"] == "synchronised"
    assert lines["cache"] == "3.0 MiB in 4 files, 1 missing (still to fetch)"
    assert lines["faults"] == "amp"
    assert "board now" in lines
    assert "disk free: state " in lines["board now"]
    assert "WARNING" not in result.stdout


def test_without_a_status_file_it_says_so_and_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_status(config)
    assert result.returncode == 1
    assert "no status yet" in result.stdout
    assert str(tmp_path / "state" / STATUS_FILE) in result.stdout


def test_a_damaged_status_file_does_not_send_the_technician_to_sudo(tmp_path: Path) -> None:
    """An empty status file (a full card) said "... not valid JSON: Expecting value: line 1
    column 1 (char 0) (try sudo if it is a permission problem)": sudo changes nothing."""
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATUS_FILE).write_bytes(b"")
    result = run_status(config)
    assert result.returncode == 1
    assert "is not valid JSON" in result.stderr and "sudo" not in result.stderr
    assert "the daemon writes it anew" in result.stderr and "Traceback" not in result.stderr


def test_a_mistake_elsewhere_in_the_config_does_not_hide_the_state(tmp_path: Path) -> None:
    """``broker.port: "abc"`` made status print only the config error and exit 78, although
    it needs only ``storage.state_dir`` (as ``relay-off`` needs only ``gpio``)."""
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "  host: 192.0.2.1\n", "  host: 192.0.2.1\n  port: 'abc'\n"
    )
    config.write_text(text + "policy: {timezone: Asia/Ho_Chi_Minh}\n", encoding="utf-8")
    (tmp_path / "state").mkdir()
    write_status(tmp_path / "state", encode(state_message(time.time())))
    result = run_status(config)
    assert result.returncode == 0, result.stderr
    assert as_lines(result.stdout)["device"] == "loa-25-07873-001"
    assert "+07)" in as_lines(result.stdout)["updated"]  # the file's time zone
    assert "broker.port: expected an integer, got a string" in result.stderr
    assert f"the state below is read from {tmp_path / 'state'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_storage_section_falls_back_to_the_default_and_says_so(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: loa-1\nstorage: {cache_dir: [x]}\n", encoding="utf-8")
    result = run_status(bad)
    assert "configuration has errors" in result.stderr
    assert "storage.cache_dir: expected a string, got a list" in result.stderr
    fallback = "its storage section cannot be used, so the state below is read from the default"
    assert f"{fallback} /var/lib/loa-receiver" in result.stderr
    assert result.returncode in (0, 1)  # whatever this machine's default holds
    assert "Traceback" not in result.stderr


def test_write_status_is_atomic_and_mode_0640(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # the daemon's umask must not matter
    try:
        write_status(tmp_path, b'{"device":"a","online":false}')
        write_status(tmp_path, b'{"device":"b","online":false}')
    finally:
        os.umask(old_umask)
    path = status_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert read_status(tmp_path) == {"device": "b", "online": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATUS_FILE]  # no temp file left

    with pytest.raises(OSError):
        write_status(tmp_path / "missing-dir", b"{}")


def test_read_status_none_or_error(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    status_path(tmp_path).write_bytes(b"{not json")
    with pytest.raises(StatusError, match="not valid JSON"):
        read_status(tmp_path)
    status_path(tmp_path).write_bytes(b"[1, 2]")
    with pytest.raises(StatusError, match="JSON object"):
        read_status(tmp_path)


def test_format_offline_old_and_odd_states() -> None:
    now = 1_800_000_000.0
    offline = format_status({"device": "d1", "online": False}, now, written_utc=now - 7200)
    assert as_lines(offline) == {
        "device": "d1",
        "updated": "2 h ago (2027-01-15 06:00:00 UTC)",
        "daemon": "stopped (its last message was the offline state)",
    }

    old = format_status(state_message(now, ts=rfc3339(now - 600), state="idle"), now)
    assert "WARNING: old" in old
    lines = as_lines(old)
    assert lines["updated"].startswith("10 min ago")
    assert lines["playing"] == "nothing (idle)"

    # Down link, monotonic "since" measured up to the update (now_mono minus the age).
    down = state_message(now, link={"up": False, "since": 100.0, "last_error": "refused"})
    assert as_lines(format_status(down, now, now_mono=212.0))["broker"] == (
        "NOT connected for 1 min 40 s; last error: refused"
    )
    rebooted = format_status(down, now, now_mono=50.0)  # since is ahead: another boot
    assert as_lines(rebooted)["broker"] == "NOT connected; last error: refused"

    odd = format_status({"state": 3, "volume": "loud", "cache": [], "faults": [], "ts": 9}, now)
    lines = as_lines(odd)
    assert lines["device"] == "?"
    assert lines["updated"] == "unknown"
    assert lines["volume"] == "?"
    assert lines["faults"] == "none"
    assert lines["broker"].startswith("?")


def test_a_link_that_is_not_up_says_why_in_words() -> None:
    """In the first minute the board said "NOT connected, 0 reconnects", whether it was still
    connecting or the broker had refused its password."""
    now = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    since = rfc3339(now - 40)

    def broker(**link: Any) -> str:
        base = {"up": False, "last_error": None, "reconnects": 0, "broker": "mqtt.lan:8883"}
        status = state_message(now, ts=rfc3339(now - 2), link={**base, **link})
        return as_lines(format_status(status, now))["broker"]

    assert broker(since=since, attempts=0, cause=None) == "connecting (since 07:59:20)"
    refused = "refused by broker: bad credentials (user name or password) (Bad user name, 0x86)"
    assert broker(since=since, attempts=3, cause="refused_credentials", last_error=refused) == (
        "NOT connected: the broker refused the user name or password "
        "(since 07:59:20, 3 failed attempts)"
    )
    dns = "unreachable: cannot resolve 'mqtt.lan' (Name or service not known)"
    assert broker(since=since, attempts=1, cause="dns", last_error=dns) == (
        "NOT connected: the broker's name does not resolve (mqtt.lan) "
        "(since 07:59:20, 1 failed attempt)"
    )
    # Mosquitto 2 answers a wrong password with "not authorised" (0x87), not "bad user name or
    # password" (0x86): the board blamed the broker's ACL and the technician looked there.
    not_authorised = "refused by broker: not authorised (Not authorized, 0x87)"
    assert broker(
        since=since, attempts=2, cause="refused_not_authorised", last_error=not_authorised
    ) == (
        "NOT connected: the broker refused it as not authorised: a wrong user name or password, "
        "or a user it does not let in (since 07:59:20, 2 failed attempts)"
    )
    odd = broker(since=since, attempts=2, cause="new-in-v9", last_error="something new")
    assert odd == "NOT connected: something new (since 07:59:20, 2 failed attempts)"
    # From a daemon that did not say: as before.
    assert broker(last_error="refused") == "NOT connected, 0 reconnects; last error: refused"


def test_the_link_s_reason_is_one_bounded_line_without_control_characters() -> None:
    """The reason in words quoted the link's error as the file had it: a newline, a terminal
    escape or a kilobyte of it reached the technician's terminal, where the plain reason was
    already cut to one line of 200 characters."""
    now = 1_800_000_000.0
    since = rfc3339(now - 40)
    hostile = "refused\n\x1b]0;owned\x07\x1b[2J" + "y" * 5000

    def broker(**link: Any) -> str:
        base = {"up": False, "reconnects": 0, "broker": "mqtt.lan:8883", "since": since}
        status = state_message(now, ts=rfc3339(now - 2), link={**base, **link})
        out = format_status(status, now)
        assert "\x1b" not in out and "\x07" not in out and "yyyyy" * 50 not in out, repr(out)
        return as_lines(out)["broker"]

    for cause in ("refused", "unreachable", "tls_verify", "tls", "lost", "new-in-v9"):
        assert broker(attempts=1, cause=cause, last_error=hostile).startswith("NOT connected: ")
    said = broker(attempts=1, cause="dns", last_error="x", broker="a\x1b[2Jb:1883")
    assert said.startswith("NOT connected: the broker's name does not resolve (a?[2Jb)")
    assert broker(up=True, since="\x1b[2J", last_error=None).startswith("connected since ?[2J")


def test_no_value_of_the_file_reaches_the_terminal_with_a_control_character() -> None:
    """The reference, the relays' names, the manual override and the schedules' ids and
    versions were printed as the file had them: an escape sequence in any of them (a file
    written by hand, a damaged card) could rewrite what the technician reads."""
    now = 1_800_000_000.0
    escape = "\x1b]0;owned\x07\x1b[2J"
    status = state_message(
        now,
        ts=rfc3339(now - 2),
        playing={"ref": f"c{escape}", "title": "t", "priority": "normal", "since": rfc3339(now)},
        relays={f"amp{escape}": "on", "aux": f"off{escape}"},
        relay_override=f"on{escape}",
        schedules={f"morning{escape}": f"3{escape}", "evening": 2},
    )
    out = format_status(status, now)
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    rows = as_lines(out)
    assert rows["playing"].startswith('"t", normal, ref c?]0;owned??[2J'), rows["playing"]
    assert "amp?]0;owned??[2J on" in rows["relay"] and "(manual override: on?" in rows["relay"]
    assert rows["schedules"] == "evening v2, morning?]0;owned??[2J v3?]0;owned??[2J"


def test_status_shows_the_outbox(tmp_path: Path) -> None:
    from receiver.outbox import Outbox

    config = write_config(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write_status(state_dir, encode(state_message(time.time())))
    outbox = Outbox(state_dir / "outbox.db", capacity=3)
    for n in range(1, 6):
        outbox.add(n, b"{}")
    outbox.ack(3)
    outbox.close()
    result = run_status(config)
    assert result.returncode == 0, result.stderr
    assert as_lines(result.stdout)["outbox"] == (
        "2 events waiting for the broker (n 4 to 5); 2 dropped for lack of room"
    )


def test_status_with_an_empty_or_missing_outbox(tmp_path: Path) -> None:
    from receiver.outbox import Outbox

    config = write_config(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write_status(state_dir, encode(state_message(time.time())))
    assert as_lines(run_status(config).stdout)["outbox"] == "none yet (no outbox.db)"
    Outbox(state_dir / "outbox.db").close()
    assert as_lines(run_status(config).stdout)["outbox"] == "empty: every event reached the broker"
    assert not (state_dir / "outbox.db-journal").exists()


def test_status_without_config_reads_the_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from receiver import cli

    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    write_status(tmp_path / "state", encode(state_message(time.time())))
    monkeypatch.setattr(cli, "INSTALLED_CONFIG", str(config))
    assert cli.main(["status"]) == 0
    assert as_lines(capsys.readouterr().out)["device"] == "loa-25-07873-001"
    monkeypatch.setattr(cli, "INSTALLED_CONFIG", str(tmp_path / "none.yaml"))
    assert cli.main(["status"]) == 78
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.yaml'}: config file not found" in err
    assert "--config" in err  # says how to name another file


@pytest.mark.parametrize("command", ["status", "check-config"])
def test_a_reader_that_went_away_ends_the_tool_quietly(tmp_path: Path, command: str) -> None:
    """``receiver status | head -4`` ended in Python's BrokenPipeError traceback once ``head``
    had its lines (``receiver-admin`` already ended such a run quietly)."""
    config = write_config(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write_status(state_dir, encode(state_message(time.time())))
    reading, writing = os.pipe()
    os.close(reading)
    try:
        ended = subprocess.run(
            [
                sys.executable,
                "-c",
                "import receiver_entry; receiver_entry.receiver()",
                command,
                "--config",
                str(config),
            ],
            cwd=ROOT,
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writing)
    assert "Traceback" not in ended.stderr and "BrokenPipe" not in ended.stderr, ended.stderr
    assert ended.returncode == 141

"""``collect`` and ``fleet`` as a province's staff slip with them, against a real Mosquitto: a
database that is not the collector's, a disk that fills up, a collector started twice, a group
mistyped. Each must end in one line that says what is wrong, and lose no report.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from receiver.central import collector
from receiver.central.admin import main
from receiver.central.broker import SHORT_LIVED_S, BrokerOptions, ShortLived
from tests.central.conftest import Secured, device_event, device_state
from tests.central.test_collector import ROOT, Devices, admin, stored
from tests.lab.broker import MosquittoBroker


def collect(secured: Secured, database: Path, *argv: str) -> list[str]:
    return ["collect", "--db", str(database), *argv, *secured.login()]


def make_session(secured: Secured, database: Path) -> None:
    """The collector's session on the broker, so events published now wait for the next run."""
    assert main(collect(secured, database, "--duration", "0.2")) == 0


def publish_events(secured: Secured, count: int, device: str = "loa-001") -> None:
    devices = Devices(secured)
    try:
        for n in range(1, count + 1):
            devices.send(
                f"loa/v1/dev/{device}/events",
                device_event(device, n, "accepted", ref=f"cmd-{n}", detail="x" * 200),
            )
    finally:
        devices.close()


def test_a_database_of_an_older_layout_is_refused_before_anything_is_taken(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An events table without the columns collect writes ended the run in a traceback
    ("table events has no column named ref") at the first event."""
    good = tmp_path / "good.db"
    make_session(secured, good)
    publish_events(secured, 3)
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE events (device TEXT, n INTEGER, ts_utc REAL, raw BLOB)")
    capsys.readouterr()
    assert main(collect(secured, old, "--duration", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"--db {old}: " in err and "events" in err and "ref" in err
    # Nothing was acknowledged: the events still wait on the broker for the right database.
    assert main(collect(secured, good, "--duration", "1")) == 0
    assert stored(good) == [("loa-001", 1), ("loa-001", 2), ("loa-001", 3)]


def test_a_database_of_something_else_is_refused_and_left_as_it_was(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """collect added its tables to any SQLite file it was given (another program's data)."""
    other = tmp_path / "inventory.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE speakers (id TEXT, commune TEXT)")
    assert main(collect(secured, other, "--duration", "0.2")) == 2
    err = capsys.readouterr().err
    assert f"--db {other}: " in err and "speakers" in err
    with sqlite3.connect(other) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master")]
    assert tables == ["speakers"]


def test_a_database_from_a_newer_receiver_admin_is_refused(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = tmp_path / "newer.db"
    collector.open_database(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {collector.SCHEMA_VERSION + 1}")
    assert main(collect(secured, newer, "--duration", "0.2")) == 2
    err = capsys.readouterr().err
    assert f"--db {newer}: " in err and "newer" in err


def test_the_database_collect_made_before_is_taken_again(secured: Secured, tmp_path: Path) -> None:
    """The check refuses what is not the collector's, not its own files of earlier runs."""
    database = tmp_path / "events.db"
    with sqlite3.connect(database) as db:  # as collect made it before it numbered its layout
        db.executescript(collector.SCHEMA)
    make_session(secured, database)
    publish_events(secured, 2)
    assert main(collect(secured, database, "--duration", "1")) == 0
    assert stored(database) == [("loa-001", 1), ("loa-001", 2)]


def test_a_database_in_a_directory_that_does_not_exist_names_the_directory(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "cannot open it as a database (unable to open database file)"."""
    database = tmp_path / "reports" / "events.db"
    assert main(collect(secured, database, "--duration", "0.2")) == 2
    err = capsys.readouterr().err
    assert f"the directory {database.parent} does not exist" in err


def test_a_database_where_this_user_may_not_write_says_so(secured: Secured, tmp_path: Path) -> None:
    """A read-only directory, or a read-only database file, said only "cannot open it as a
    database (unable to open database file)", or failed at the first event."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "events.db").touch()
    for database, read_only, said in (
        (
            tmp_path / "locked" / "events.db",
            tmp_path / "locked",
            f"may not write in {tmp_path / 'locked'}",
        ),
        (tmp_path / "events.db", tmp_path / "events.db", "may not write it"),
    ):
        done = subprocess.run(
            [
                *_read_only(read_only),
                sys.executable,
                "-m",
                "receiver.central.admin",
                *collect(secured, database, "--duration", "0.2"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"receiver-admin: --db {database}: "), done.stderr
        assert said in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert (tmp_path / "events.db").stat().st_size == 0  # left as it was


def _read_only(path: Path) -> list[str]:
    """The prefix of a command that finds ``path`` read-only. Root may write whatever its mode
    says, so for root it is a read-only bind mount of ``path`` in a mount namespace of the
    command's own (nothing outside sees it); for another user, its mode."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return []
    mount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", str(path)]


def test_a_disk_that_fills_up_stops_collect_in_one_line_and_loses_nothing(
    secured: Secured, tmp_path: Path
) -> None:
    """A write that failed (disk full, a file size limit) ended collect in a traceback."""
    database = tmp_path / "events.db"
    make_session(secured, database)
    publish_events(secured, 400)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.central.admin",
            *collect(secured, database, "--duration", "10"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_files,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"receiver-admin: --db {database}: ") and "full" in last, last
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # With room again, the events that were not written come from the broker: none is lost.
    assert main(collect(secured, database, "--duration", "3")) == 0
    assert len(stored(database)) == 400


def test_a_second_collect_on_the_same_database_is_refused(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two collectors on one database (and so, usually, one session) took the session from each
    other on every reconnect, each storing part of the reports, without a word."""
    database = tmp_path / "events.db"
    first = subprocess.Popen(
        [sys.executable, "-m", "receiver.central.admin", *collect(secured, database)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None
        assert first.stderr.readline().startswith("collecting ")
        started = time.monotonic()
        assert main(collect(secured, database, "--duration", "2")) == 2
        assert time.monotonic() - started < 2  # refused at once, not after a run
        err = capsys.readouterr().err
        assert f"--db {database}: another receiver-admin collect" in err
        assert first.poll() is None  # the first one goes on
    finally:
        first.terminate()
        first.wait(10)


def test_fleet_with_a_group_no_device_lists_says_so(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fleet --group commune-25-0787`` printed an empty table, exit 0: as if the group's
    boards had all gone, when the id was mistyped."""
    devices = Devices(secured)
    try:
        for name in ("loa-001", "loa-002"):
            devices.send(
                f"loa/v1/dev/{name}/state",
                device_state(name, time.time(), groups=["commune-25-07873"]),
                retain=True,
            )
    finally:
        devices.close()
    assert main(["fleet", "--timeout", "3", "--group", "commune-25-0787", *secured.login()]) == 1
    err = capsys.readouterr().err
    assert "commune-25-0787" in err and "did you mean commune-25-07873?" in err
    assert main(["fleet", "--timeout", "3", "--group", "commune-25-07873", *secured.login()]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("registry_text", [None, "not a receiver enroll line\n"])
def test_a_bad_registry_is_refused_before_the_database_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry_text: str | None
) -> None:
    """``collect --db NEW.db --registry BAD`` made NEW.db (and its -wal and -shm) before it
    refused the registry: a refused run left an empty database behind."""
    registry = tmp_path / "devices.jsonl"
    if registry_text is not None:
        registry.write_text(registry_text)
    database = tmp_path / "events.db"
    argv = ["--registry", str(registry), "--host", "127.0.0.1", "--port", "1", "--duration", "0.2"]
    assert main(["collect", "--db", str(database), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("receiver-admin: ") and str(registry) in err, err
    assert err.count("\n") == 1, err
    assert not database.exists()
    assert sorted(tmp_path.iterdir()) == ([registry] if registry_text is not None else [])


def _assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 3, err
    assert err.startswith("receiver-admin: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_a_broker_with_nothing_listening_leaves_no_new_database_behind(
    stopped_broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``collect --db NEW.db`` against a port where nothing listens made NEW.db (and its -wal
    and -shm), an empty database that looks like a working collector's, then said it could not
    connect."""
    reports = tmp_path / "reports"
    reports.mkdir()
    where = ["--host", stopped_broker.host, "--port", str(stopped_broker.port)]
    argv = ["collect", "--db", str(reports / "events.db"), "--duration", "0.2", *where]
    code = main(argv)
    _assert_refused(code, capsys.readouterr().err, "cannot connect to", "connection refused")
    assert list(reports.iterdir()) == []


def test_a_refused_login_leaves_no_new_database_behind(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped password left an empty collector database behind."""
    reports = tmp_path / "reports"
    reports.mkdir()
    argv = ["collect", "--db", str(reports / "events.db"), "--duration", "0.2"]
    code = main([*argv, *secured.login("central", "not the pw")])
    _assert_refused(code, capsys.readouterr().err, "refused the login of user 'central'")
    assert list(reports.iterdir()) == []


def test_a_refused_run_leaves_a_database_that_was_there_as_it_was(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a refused run removes is only what it made: a database that holds reports, or a
    file that was there before (even an empty one), stays."""
    database = tmp_path / "events.db"
    make_session(secured, database)
    publish_events(secured, 2)
    assert main(collect(secured, database, "--duration", "1")) == 0
    assert stored(database) == [("loa-001", 1), ("loa-001", 2)]
    empty = tmp_path / "empty.db"
    empty.touch()
    capsys.readouterr()
    for kept in (database, empty):
        argv = ["collect", "--db", str(kept), "--duration", "0.2"]
        code = main([*argv, *secured.login("central", "not the pw")])
        _assert_refused(code, capsys.readouterr().err, "refused the login")
    assert stored(database) == [("loa-001", 1), ("loa-001", 2)]
    assert empty.exists()


def _stopped_while_connecting(
    reports: Path,
    stop: signal.Signals,
    *,
    broker_timeout: str = "30",
    patch: str = "",
    ignore_sigterm: bool = False,
) -> tuple[int, str]:
    """``collect --db reports/events.db`` against a broker that accepts and never answers,
    sent ``stop`` once it has made the database and waits for the CONNACK. ``patch``: Python run
    in it before receiver-admin's main; ``ignore_sigterm``: started with SIGTERM ignored, as
    ``nohup`` and some supervisors start their commands."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, and never answers
    argv = ["collect", "--db", str(reports / "events.db"), "--host", "127.0.0.1"]
    argv += ["--port", str(silent.getsockname()[1]), "--broker-timeout", broker_timeout]
    if patch:
        start = [sys.executable, "-c", f"{patch}\nfrom receiver.central.admin import main\n"]
        start[-1] += "raise SystemExit(main())"
    else:
        start = [sys.executable, "-m", "receiver.central.admin"]
    if ignore_sigterm:  # ignored in the shell, so from its start, as it is inherited through exec
        start = ["sh", "-c", 'trap "" TERM; exec "$@"', "sh", *start]
    run = subprocess.Popen([*start, *argv], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        silent.settimeout(30)
        connection, _address = silent.accept()  # the database is made: it waits for a CONNACK
        run.send_signal(stop)
        _out, err = run.communicate(timeout=30)
        connection.close()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        silent.close()
    return run.returncode, err


def test_ctrl_c_while_collect_connects_leaves_no_new_database_behind(tmp_path: Path) -> None:
    """Stopping a collect that waits for a broker's answer left the database it had just made."""
    reports = tmp_path / "reports"
    reports.mkdir()
    code, err = _stopped_while_connecting(reports, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert list(reports.iterdir()) == []


def test_sigterm_while_collect_connects_leaves_no_new_database_behind(tmp_path: Path) -> None:
    """``timeout`` or systemd stopping a collect that waits for an unreachable broker killed it
    on the spot, leaving the empty database it had just made (and its -wal and -shm), which
    looks like a working collector's. Then it exited with status 143, which systemd counts a
    failure: it ends by SIGTERM itself, what systemd counts a clean stop."""
    reports = tmp_path / "reports"
    reports.mkdir()
    code, err = _stopped_while_connecting(reports, signal.SIGTERM)
    assert code == -signal.SIGTERM, err  # ended by SIGTERM itself: a shell shows 143
    assert err.startswith("receiver-admin: collect: stopped (SIGTERM)"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert list(reports.iterdir()) == []


def test_a_shell_still_shows_143_for_a_collect_sigterm_stopped(tmp_path: Path) -> None:
    """Ended by SIGTERM itself (as systemd wants a clean stop), collect is still 143 in ``$?``,
    what a script that ran it checks, with its one line that says why."""
    reports = tmp_path / "reports"
    reports.mkdir()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, and never answers
    argv = ["collect", "--db", str(reports / "events.db"), "--host", "127.0.0.1"]
    argv += ["--port", str(silent.getsockname()[1])]
    # The shell waits out its SIGTERM (a trap, which its command does not inherit) to say $?.
    script = 'trap : TERM; "$@"; echo "$?"'
    run = subprocess.Popen(
        ["sh", "-c", script, "sh", sys.executable, "-m", "receiver.central.admin", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        silent.settimeout(30)
        connection, _address = silent.accept()
        os.killpg(run.pid, signal.SIGTERM)  # as systemd stops a unit: each of its processes
        out, err = run.communicate(timeout=30)
        connection.close()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        silent.close()
    assert out == "143\n", (out, err)
    said, *shell = err.splitlines()
    assert said.startswith("receiver-admin: collect: stopped (SIGTERM)"), err
    # The shell may report the signal ("Terminated"), as it does for any command it ends.
    assert all("Terminated" in line and "receiver-admin:" not in line for line in shell), err
    assert list(reports.iterdir()) == []


def test_a_second_sigterm_while_the_first_removes_the_database_does_not_cut_that_short(
    tmp_path: Path,
) -> None:
    """SIGTERM, then SIGTERM again (a supervisor that insists) while collect removed the empty
    database it had made: the second one ended it half way, the database or its -wal and -shm
    left behind. It now ends it once the removal is done, as the first would have."""
    reports = tmp_path / "reports"
    reports.mkdir()
    again = (
        "import os, signal\n"
        "from receiver.central import collector\n"
        "checks = collector._holds_nothing\n"
        "def stopped_again(path):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return checks(path)\n"
        "collector._holds_nothing = stopped_again\n"
    )
    code, err = _stopped_while_connecting(reports, signal.SIGTERM, patch=again)
    assert code == -signal.SIGTERM, err
    assert err.startswith("receiver-admin: collect: stopped (SIGTERM)"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert list(reports.iterdir()) == []


def test_a_collect_started_with_sigterm_ignored_is_not_stopped_by_one_while_it_connects(
    tmp_path: Path,
) -> None:
    """A parent that started collect with SIGTERM ignored (``nohup``, some supervisors) asked
    that SIGTERM not stop it: collect put its own handler in anyway, and ended (143)."""
    reports = tmp_path / "reports"
    reports.mkdir()
    code, err = _stopped_while_connecting(
        reports, signal.SIGTERM, broker_timeout="2", ignore_sigterm=True
    )
    assert code == 3, err  # it went on, until the broker's silence refused it
    assert err.startswith("receiver-admin: 127.0.0.1:"), err
    assert "gave no MQTT answer within 2 s" in err and err.count("\n") == 1, err
    assert list(reports.iterdir()) == []


def test_a_collect_started_with_sigterm_ignored_is_not_stopped_by_one_while_it_collects(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once collecting, collect took SIGTERM as a stop even when its parent had it ignored."""
    turns: list[int] = []
    turn = collector.Collector.turn

    def signalled(self: collector.Collector, wait_s: float = collector.BATCH_S) -> int:
        turns.append(1)
        if len(turns) == 1:
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # ignored, as asked
        if len(turns) == 3:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # Ctrl-C: stop in order
        return turn(self, wait_s)

    monkeypatch.setattr(collector.Collector, "turn", signalled)
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert main(collect(secured, tmp_path / "events.db")) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    assert len(turns) >= 3, "the ignored SIGTERM stopped it"


def test_a_sigterm_handler_python_did_not_set_is_put_back_as_the_default(
    stopped_broker: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When Python could not say which SIGTERM handler was in place (one set by C code),
    collect left its own installed after it returned."""
    getsignal = signal.getsignal

    def not_from_python(signum: int) -> object:
        return None if signum == signal.SIGTERM else getsignal(signum)

    monkeypatch.setattr(signal, "getsignal", not_from_python)
    before = getsignal(signal.SIGTERM)
    try:
        code = main(
            ["collect", "--db", str(tmp_path / "events.db"), *_nothing_listening(stopped_broker)]
        )
        _assert_refused(code, capsys.readouterr().err, "cannot connect to")
        assert getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_lock_on_a_file_a_refused_run_just_removed_is_taken_on_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused run removes the database it made while it holds the lock. A collect that
    opened the file just before gets the lock on the removed file once it is free: it must
    lock the file now at that path, or it and a third collect would both write that one."""
    database = tmp_path / "events.db"
    database.touch()
    flock = fcntl.flock
    removed: list[Path] = []

    def removing_first(fd: int, operation: int) -> None:
        if not removed:
            database.unlink()  # the refused run, between this one's open and its flock
            removed.append(database)
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removing_first)
    lock = collector._only_collector(database)
    try:
        assert os.fstat(lock.fd).st_ino == database.stat().st_ino != 0
        assert lock.created  # this run made the file at that path now: a refusal removes it
    finally:
        os.close(lock.fd)


def _nothing_listening(broker: MosquittoBroker) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--duration", "0.2"]


def _ctrl_c() -> None:
    """Ctrl-C, to this thread: it runs Python's handlers, and it is the one collect holds them in
    (another thread of the test process taking it could not show whether they are held)."""
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)


def test_a_second_ctrl_c_while_a_refused_run_removes_its_database_does_not_cut_that_short(
    stopped_broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C pressed twice (the first while it connected, the second while it removed the
    database it had made): the second ended the removal half way, and the empty database
    stayed. It now ends the run once the removal is done, as Ctrl-C does (130)."""
    reports = tmp_path / "reports"
    reports.mkdir()
    checks = collector._holds_nothing

    def interrupted(path: Path) -> bool:
        _ctrl_c()
        return checks(path)

    monkeypatch.setattr(collector, "_holds_nothing", interrupted)
    code = main(
        ["collect", "--db", str(reports / "events.db"), *_nothing_listening(stopped_broker)]
    )
    assert code == 130
    assert list(reports.iterdir()) == []


class PowerCut(BaseException):
    """The machine stopping half way through something."""


def test_a_removal_cut_short_leaves_no_wal_without_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database was removed first, then its -wal and -shm: cut in between (a power cut),
    a -wal stayed with no database, and SQLite replays a -wal into a later database made with
    that name."""
    database = tmp_path / "events.db"
    lock = collector._only_collector(database)
    db = collector.open_database(database)  # open: its -wal and -shm are there
    removed: list[str] = []
    unlink = Path.unlink

    def cut_after_one(self: Path, missing_ok: bool = False) -> None:
        if removed:
            raise PowerCut
        unlink(self, missing_ok)
        removed.append(self.name)

    try:
        assert (tmp_path / "events.db-wal").exists()
        monkeypatch.setattr(Path, "unlink", cut_after_one)
        with pytest.raises(PowerCut):
            collector._remove_unused(lock)
    finally:
        db.close()
        os.close(lock.fd)
    assert removed and removed[0] != "events.db" and database.exists(), removed


def test_ctrl_c_as_collect_makes_its_database_leaves_none_behind(
    stopped_broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM) just after collect made the file, before it held its lock: the empty
    file stayed, and every later run took it for one that was there before, so none removed it."""
    reports = tmp_path / "reports"
    reports.mkdir()
    same_file = collector._same_file
    pressed: list[int] = []

    def interrupted(fd: int, path: Path) -> bool:
        if not pressed:
            pressed.append(fd)
            _ctrl_c()
        return same_file(fd, path)

    monkeypatch.setattr(collector, "_same_file", interrupted)
    code = main(
        ["collect", "--db", str(reports / "events.db"), *_nothing_listening(stopped_broker)]
    )
    assert pressed and code == 130
    assert list(reports.iterdir()) == []


def test_ctrl_c_just_after_the_database_is_opened_closes_it_before_it_is_removed(
    stopped_broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after collect opened its database left the connection open while the file
    was removed: closing later, SQLite deletes the -wal by its name, which may by then be a
    later collect's."""
    reports = tmp_path / "reports"
    reports.mkdir()
    opened: list[sqlite3.Connection] = []
    open_database = collector.open_database

    def recorded(path: Path) -> sqlite3.Connection:
        opened.append(open_database(path))
        return opened[-1]

    class Interrupted(BrokerOptions):
        @classmethod
        def from_args(cls, args: argparse.Namespace) -> BrokerOptions:
            _ctrl_c()
            return BrokerOptions.from_args(args)

    open_at_removal: list[bool] = []
    remove_unused = collector._remove_unused

    def removing(lock: collector._Lock) -> None:
        try:
            opened[0].execute("SELECT 1")
            open_at_removal.append(True)
        except sqlite3.ProgrammingError:  # closed
            open_at_removal.append(False)
        remove_unused(lock)

    monkeypatch.setattr(collector, "open_database", recorded)
    monkeypatch.setattr(collector, "BrokerOptions", Interrupted)
    monkeypatch.setattr(collector, "_remove_unused", removing)
    code = main(
        ["collect", "--db", str(reports / "events.db"), *_nothing_listening(stopped_broker)]
    )
    assert code == 130
    assert open_at_removal == [False]
    assert list(reports.iterdir()) == []


def test_a_new_database_whose_maker_lost_the_lock_to_a_refused_run_is_not_left_behind(
    stopped_broker: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two collects started at once on a database not there yet: one makes the file, the other
    opens it and takes the lock first, so the maker is refused ("another collect is writing
    it"). The one with the lock did not make the file, and when the broker refused it too, it
    kept it: an empty database that no run used was left behind."""
    reports = tmp_path / "reports"
    reports.mkdir()
    database = reports / "events.db"
    real_open = os.open
    maker: list[int] = []

    def other_makes_it_first(file: str | Path, flags: int, mode: int = 0o777, **kw: int) -> int:
        if flags & os.O_EXCL and not maker:
            maker.append(real_open(file, flags, mode))  # the other run makes the file, unlocked
        return real_open(file, flags, mode, **kw)

    flock = fcntl.flock

    def then_loses_the_lock(fd: int, operation: int) -> None:
        flock(fd, operation)  # this run takes the lock first ...
        with pytest.raises(BlockingIOError):  # ... so the run that made the file is refused
            flock(maker[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(maker[0])  # and ends

    monkeypatch.setattr(os, "open", other_makes_it_first)
    monkeypatch.setattr(fcntl, "flock", then_loses_the_lock)
    code = main(["collect", "--db", str(database), *_nothing_listening(stopped_broker)])
    _assert_refused(code, capsys.readouterr().err, "cannot connect to")
    assert maker, "the other run did not make the file"
    assert list(reports.iterdir()) == []


def test_a_new_database_another_collect_holds_is_not_removed_by_the_run_that_made_it(
    stopped_broker: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The other way round: the run that made the file finds another collect holding its lock.
    It is refused, and leaves the file to that one, which may be collecting into it."""
    reports = tmp_path / "reports"
    reports.mkdir()
    database = reports / "events.db"
    flock = fcntl.flock
    holder: list[int] = []

    def other_locks_it_first(fd: int, operation: int) -> None:
        if not holder:
            holder.append(os.open(database, os.O_RDWR))  # the other run: opened, then locked
            flock(holder[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", other_locks_it_first)
    try:
        code = main(["collect", "--db", str(database), *_nothing_listening(stopped_broker)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "another receiver-admin collect is writing it" in err
        assert err.count("\n") == 1, err
        assert os.fstat(holder[0]).st_ino == database.stat().st_ino  # still the one at the path
    finally:
        for fd in holder:
            os.close(fd)


class TakingBroker:
    """Just enough of an MQTT 5 broker to take a session: it accepts a client and its
    subscriptions, then, on :meth:`take`, drops it as a broker drops a client when another
    connects with its client id: DISCONNECT, reason 0x8E "Session taken over". (Mosquitto sends
    that from 2.0.15; the lab's may only close the connection.) It counts the connections."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.subscribed = threading.Event()
        self._take = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _session(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError, EOFError):
            self._read(client)  # CONNECT
            client.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: accepted, no properties
            kind, body = self._read(client)
            assert kind >> 4 == 8, kind  # SUBSCRIBE: packet id, properties, topics
            topics, at = 0, 2 + 1 + body[2]
            while at < len(body):
                at += 2 + int.from_bytes(body[at : at + 2], "big") + 1
                topics += 1
            suback = body[:2] + bytes([0]) + bytes([1] * topics)
            client.sendall(bytes([0x90, len(suback)]) + suback)
            self.subscribed.set()
            self._take.wait(30)
            client.sendall(bytes([0xE0, 2, 0x8E, 0]))  # DISCONNECT: Session taken over
            time.sleep(0.5)

    @staticmethod
    def _read(client: socket.socket) -> tuple[int, bytes]:
        def byte() -> int:
            got = client.recv(1)
            if not got:
                raise EOFError
            return got[0]

        kind, length, shift = byte(), 0, 0
        while True:
            digit = byte()
            length += (digit & 0x7F) << shift
            shift += 7
            if digit < 0x80:
                break
        body = b""
        while len(body) < length:
            more = client.recv(length - len(body))
            if not more:
                raise EOFError
            body += more
        return kind, body

    def take(self) -> None:
        self._take.set()

    def close(self) -> None:
        self.server.close()


def _taken(argv: list[str], broker: TakingBroker) -> subprocess.CompletedProcess[str]:
    """Runs ``receiver-admin argv`` against ``broker``, which takes its session once it has
    subscribed; what it printed and its exit, and that it did not come back."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver.central.admin",
            *argv,
            "--host",
            "127.0.0.1",
            "--port",
            str(broker.port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    try:
        assert broker.subscribed.wait(30), "it never subscribed"
        broker.take()
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    time.sleep(2.5)  # paho would have reconnected within its first delay (1 s)
    assert broker.connections == 1, "it came back for the session"
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_a_collector_whose_session_another_client_takes_stops_and_says_so(
    tmp_path: Path,
) -> None:
    """Two collectors with one --client-id on different databases (a collect command copied to
    a second machine) took the broker's session from each other for ever: each connect made
    the broker drop the other ("Session taken over"), which reconnected, and each stored a part
    of the reports without a word."""
    broker = TakingBroker()
    try:
        argv = ["collect", "--db", str(tmp_path / "a.db"), "--client-id", "central-collect"]
        done = _taken(argv, broker)
    finally:
        broker.close()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "receiver-admin: collect: another client took session 'central-collect' on "
        f"127.0.0.1:{broker.port} (a second collect with the same --client-id?); each collector"
        " needs its own --client-id"
    ), done.stderr


def test_a_watch_whose_session_another_client_takes_stops_and_says_so() -> None:
    """``watch --client-id`` keeps a session too: two of one id took it from each other for
    ever, each printing a part of the reports."""
    broker = TakingBroker()
    try:
        done = _taken(["watch", "--device", "loa-001", "--client-id", "desk-1"], broker)
    finally:
        broker.close()
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"receiver-admin: watch: another client took session 'desk-1' on 127.0.0.1:{broker.port}"
        " (a second watch with the same --client-id?); each watch needs its own --client-id"
    ], done.stderr


def test_only_connections_ended_right_after_they_began_count_and_only_in_a_row() -> None:
    short = ShortLived()
    for at in (0.0, 2.0, 4.0):  # each ended 1 s after its CONNACK, as a taken session does
        short.connected(at)
        short.disconnected(at + 1.0, clean=False)
    assert short.count == 3
    assert short.news() == 3
    short.connected(5.0)
    short.disconnected(6.0, clean=False)
    assert (short.count, short.news()) == (4, None)  # said once
    short.connected(10.0)
    short.disconnected(10.0 + SHORT_LIVED_S + 1, clean=False)  # up a while: a network drop
    assert short.count == 0
    short.disconnected(30.0, clean=False)  # a failed reconnect was no connection
    short.connected(40.0)
    short.disconnected(40.5, clean=True)  # this client's own close()
    assert short.count == 0


def _fight_warning(command: str, where: str, client_id: str, needs: str) -> str:
    return (
        f"receiver-admin: warning: {command}: the broker at {where} keeps closing session "
        f"{client_id!r} right after it connects (3 times): is a second {command} running with "
        f"the same --client-id? {needs}"
    )


def test_two_collectors_of_one_client_id_on_a_broker_that_only_closes_the_session_warn(
    secured: Secured, tmp_path: Path
) -> None:
    """Mosquitto before 2.0.15 (Debian 12's 2.0.11) does not say "Session taken over": it only
    closes the older connection, paho reconnects and takes the session back, for ever; two
    collectors with one --client-id on two databases each stored a part, without a word. Each
    connection of the pair lasts about paho's first reconnect delay (1 s), so within seconds at
    least one of them warns, once; they go on collecting (a flaky network looks the same)."""
    argv = ["--client-id", "central-collect", "--duration", "10"]
    runs = [
        admin(secured, "collect", "--db", str(tmp_path / f"{name}.db"), *argv)
        for name in ("a", "b")
    ]
    done = [run.communicate(timeout=60) for run in runs]
    errs = [err for _out, err in done]
    for run, err in zip(runs, errs, strict=True):
        assert run.returncode == 0, err
        assert "Traceback" not in err, err
    warning = _fight_warning(
        "collect",
        f"{secured.broker.host}:{secured.broker.port}",
        "central-collect",
        "each collector needs its own",
    )
    said = [err.splitlines().count(warning) for err in errs]
    assert max(said) == 1, errs
    for err in errs:  # no other wording of it, and never twice
        assert sum("keeps closing" in line for line in err.splitlines()) <= 1, err


def test_two_watches_of_one_client_id_on_a_broker_that_only_closes_the_session_warn(
    secured: Secured,
) -> None:
    """``watch --client-id`` keeps a session too; two of one id on such a broker each printed
    a part of the reports."""
    argv = ["watch", "--device", "loa-001", "--client-id", "desk-1", "--timeout", "10"]
    runs = [admin(secured, *argv) for _ in range(2)]
    errs = [run.communicate(timeout=60)[1] for run in runs]
    for err in errs:
        assert "Traceback" not in err, err
        assert sum("keeps closing" in line for line in err.splitlines()) <= 1, err
    warning = _fight_warning(
        "watch",
        f"{secured.broker.host}:{secured.broker.port}",
        "desk-1",
        "each watch needs its own",
    )
    assert max(err.splitlines().count(warning) for err in errs) == 1, errs


def test_a_collector_through_a_broker_restart_does_not_warn(
    secured: Secured, tmp_path: Path
) -> None:
    """A broker restart soon after collect connected drops it once, right after its connect:
    that is no second collector, and collect says nothing about one."""
    run = admin(
        secured, "collect", "--db", str(tmp_path / "a.db"), "--client-id", "c-1", "--duration", "6"
    )
    assert run.stderr is not None
    said = run.stderr.readline()
    assert said.startswith("collecting "), said
    secured.broker.restart()
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "Traceback" not in err and "warning" not in err, err


def test_a_collect_stopped_by_sigterm_in_process_returns_143_and_leaves_its_caller_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the command line collect ends by the SIGTERM that stopped it (a clean stop to
    systemd); called with its words from a program's own process (a test, a script), killing
    that process would take the caller down with it: it gets the status instead."""
    from receiver.central import admin, collector

    def stopped(_args: object) -> int:
        raise collector.TerminatedError("collect: stopped (SIGTERM) before it had connected")

    monkeypatch.setattr(collector, "collect_command", stopped)
    argv = ["collect", "--db", str(tmp_path / "events.db"), "--host", "127.0.0.1"]
    assert admin.main(argv) == 143
    assert capsys.readouterr().err.startswith("receiver-admin: collect: stopped (SIGTERM)")

"""``receiver-admin collect``: every device's events and states, kept in SQLite, none lost.

The collector holds a persistent MQTT session (a fixed client id, clean start off, a session
the broker keeps for a week), so QoS 1 events published while it is stopped, or while the
broker restarts, are queued for it. It acknowledges a message to the broker only after the row
is committed (paho's manual acknowledgement): a kill at any instant loses nothing, and a message
delivered again is stored once, because an event's key is (device, ``n``, ``ts``) and a
state's is (device, ``ts``). A device numbers its events upwards and never reuses a number,
except after its state store was reset (docs/protocol.md section 11), when ``n`` starts at 1
again: the event's own time keeps those apart from the old ones. An event whose key is known
with different content is kept aside in ``event_conflicts`` rather than overwriting the first.

Tables: ``events`` (one row per device event), ``states`` (each change of a device's state:
online or not, idle or playing what; the minute-by-minute refreshes of an unchanged state are
not kept, or a province would store 1,440 rows a device a day), ``schedules`` (the schedule
documents seen retained, for planned start times). :mod:`receiver.central.report` reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import queue
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from receiver.central.broker import BrokerOptions, Connection
from receiver.central.inputs import InputError, run_seconds, session_client_id
from receiver.central.received import DeviceMessage, device_topics, parse_device_message
from receiver.central.reports import (
    SUSPECT_SCHEMA,
    ReportVerifier,
    seed_verifier,
    set_aside,
    verifier_for,
)
from receiver.core.envelope import parse_envelope
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.timefmt import ts_utc

DEFAULT_CLIENT_ID: Final = "receiver-admin-collect"
# The layout of the tables below, kept in the file's user_version; a file of a higher number was
# made by a newer receiver-admin. A file of 0 is this layout from before it was numbered, or new.
SCHEMA_VERSION: Final = 1
BATCH_S: Final = 0.05  # rows are committed (then acknowledged) at least this often

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL,
    n INTEGER NOT NULL,
    ts_utc REAL NOT NULL,  -- the device's ts (0 if it had none it could give)
    kind TEXT,
    ref TEXT,
    reason TEXT,
    detail TEXT,
    received_utc REAL NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (device, n, ts_utc)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_utc);
CREATE TABLE IF NOT EXISTS event_conflicts (
    device TEXT NOT NULL, n INTEGER NOT NULL, received_utc REAL NOT NULL, raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS states (
    device TEXT NOT NULL,
    ts_utc REAL NOT NULL,
    online INTEGER NOT NULL,
    state TEXT,
    playing_ref TEXT,
    playing_title TEXT,
    playing_priority TEXT,
    volume INTEGER,
    received_utc REAL NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (device, ts_utc)
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    tz TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
"""


class DatabaseRefusedError(Exception):
    """The file is an SQLite database, but not one this collector may write into."""


class TerminatedError(BaseException):
    """SIGTERM (``timeout``, systemd stopping it) before collect began: it ends as Ctrl-C does.

    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way mistakes it for
    a failure of its own and carries on.
    """


# What stops collect: SIGTERM (timeout, systemctl stop) and Ctrl-C.
_STOPS: Final = (signal.SIGTERM, signal.SIGINT)


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise TerminatedError(
        "collect: stopped (SIGTERM) before it had connected to the broker; nothing was stored"
    )


def open_database(path: Path) -> sqlite3.Connection:
    """The collector's database (made if missing), durable at every commit.

    Raises DatabaseRefusedError for another program's database, or the collector's of another
    layout: found before the first report is taken, not at the first row that will not fit (the
    broker would deliver it again and again, to a collector that fails every time).
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        problem = layout_problem(db)
        if problem is not None:
            raise DatabaseRefusedError(problem)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
        db.executescript(SCHEMA + SUSPECT_SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def _columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {
        name: {column for (_cid, column, *_rest) in db.execute(_table_info(name))}
        for (name,) in tables
        if not name.startswith("sqlite_")
    }


def _table_info(name: str) -> str:
    quoted = name.replace('"', '""')
    return f'PRAGMA table_info("{quoted}")'


def layout_problem(db: sqlite3.Connection) -> str | None:
    """Why the collector must not write into this database, or None (its own, or empty)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return (
            f"made by a newer receiver-admin (layout {version}, this one writes {SCHEMA_VERSION}):"
            " collect with that one, or give a new file"
        )
    found = _columns(db)
    if not found:
        return None
    expected = _columns_of(SCHEMA + SUSPECT_SCHEMA)
    if not found.keys() & expected.keys():
        names = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        return (
            f"an SQLite database of something else (tables {names}), not the collector's: "
            "give the collector's file, or a new one"
        )
    for table, columns in sorted(expected.items()):
        missing = sorted(columns - found.get(table, columns))
        if missing:
            return (
                f"table {table} has no column {', '.join(missing)}: not a layout this "
                "receiver-admin collects into; give a new file"
            )
    return None


def _columns_of(schema: str) -> dict[str, set[str]]:
    with contextlib.closing(sqlite3.connect(":memory:")) as scratch:
        scratch.executescript(schema)
        return _columns(scratch)


@dataclass
class Counts:
    events: int = 0
    duplicates: int = 0
    conflicts: int = 0
    suspect: int = 0  # set aside: not signed by the device's enrolled key, or a replay
    states: int = 0
    schedules: int = 0


def store_event(db: sqlite3.Connection, message: DeviceMessage, received: float, c: Counts) -> None:
    body = message.body or {}
    n = message.n
    if n is None:
        return  # not an event anyone can key; the device never sends one
    made = ts_utc(body.get("ts")) or 0.0
    cursor = db.execute(
        "INSERT OR IGNORE INTO events "
        "(device, n, ts_utc, kind, ref, reason, detail, received_utc, raw) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.device,
            n,
            made,
            _text(body.get("kind")),
            _text(body.get("ref")),
            _text(body.get("reason")),
            _text(body.get("detail")),
            received,
            message.raw,
        ),
    )
    if cursor.rowcount:
        c.events += 1
        return
    known = db.execute(
        "SELECT raw FROM events WHERE device = ? AND n = ? AND ts_utc = ?",
        (message.device, n, made),
    ).fetchone()
    if known is not None and bytes(known[0]) == message.raw:
        c.duplicates += 1
    else:
        c.conflicts += 1
        db.execute(
            "INSERT INTO event_conflicts (device, n, received_utc, raw) VALUES (?, ?, ?, ?)",
            (message.device, n, received, message.raw),
        )


def store_state(db: sqlite3.Connection, message: DeviceMessage, received: float, c: Counts) -> None:
    body = message.body
    if body is None:
        return
    online = body.get("online") is True
    # An offline state (the device's will) has no ts: it is dated by its arrival.
    made = ts_utc(body.get("ts")) if online else received
    if made is None:
        return
    found = body.get("playing")
    playing: dict[str, Any] = found if isinstance(found, dict) else {}
    volume = body.get("volume")
    what = (int(online), _text(body.get("state")), _text(playing.get("ref")))
    last = db.execute(
        "SELECT online, state, playing_ref FROM states WHERE device = ? AND ts_utc <= ? "
        "ORDER BY ts_utc DESC LIMIT 1",
        (message.device, made),
    ).fetchone()
    if last is not None and tuple(last) == what:
        return  # a refresh of the state already kept
    cursor = db.execute(
        "INSERT OR IGNORE INTO states (device, ts_utc, online, state, playing_ref, "
        "playing_title, playing_priority, volume, received_utc, raw) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.device,
            made,
            int(online),
            _text(body.get("state")),
            _text(playing.get("ref")),
            _text(playing.get("title")),
            _text(playing.get("priority")),
            volume if isinstance(volume, int) else None,
            received,
            message.raw,
        ),
    )
    c.states += cursor.rowcount


def store_schedule(db: sqlite3.Connection, raw: bytes, c: Counts) -> None:
    try:
        payload = json.loads(parse_envelope(raw).body)
    except (Rejection, ValueError):
        return
    if not isinstance(payload, dict):
        return
    sid, version, tz = payload.get("id"), payload.get("version"), payload.get("tz")
    if isinstance(sid, str) and isinstance(version, int) and isinstance(tz, str):
        cursor = db.execute(
            "INSERT OR IGNORE INTO schedules (id, version, tz, payload) VALUES (?, ?, ?, ?)",
            (sid, version, tz, json.dumps(payload, ensure_ascii=False)),
        )
        c.schedules += cursor.rowcount


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@record
class Arrival:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_utc: float


class Collector:
    """Receives on a persistent session; stores, commits, then acknowledges each batch."""

    def __init__(
        self,
        db: sqlite3.Connection,
        options: BrokerOptions,
        prefix: str,
        client_id: str,
        verifier: ReportVerifier | None = None,
    ):
        self.db = db
        self.verifier = verifier
        if verifier is not None:
            seed_verifier(verifier, db)
        self.prefix = prefix
        self.counts = Counts()
        self.arrivals: queue.Queue[Arrival] = queue.Queue()
        state_topic, events_topic = device_topics(prefix)
        self.connection = Connection(
            options,
            client_id=client_id,
            persistent=True,
            manual_ack=True,
            subscriptions=(events_topic, state_topic, f"{prefix}/grp/+/schedule"),
            on_message=lambda msg: self.arrivals.put(
                Arrival(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time())
            ),
        )

    def _batch(self, wait_s: float) -> Iterator[Arrival]:
        try:
            yield self.arrivals.get(timeout=wait_s)
        except queue.Empty:
            return
        while True:
            try:
                yield self.arrivals.get_nowait()
            except queue.Empty:
                return

    def turn(self, wait_s: float = BATCH_S) -> int:
        """Store what has arrived in one transaction, then acknowledge it; how many."""
        batch = list(self._batch(wait_s))
        if not batch:
            return 0
        with _transaction(self.db):
            for arrival in batch:
                self._store(arrival)
        for arrival in batch:
            if arrival.qos > 0:
                self.connection.ack(arrival.mid, arrival.qos)
        return len(batch)

    def _store(self, arrival: Arrival) -> None:
        if arrival.topic.endswith("/schedule"):
            if arrival.payload:
                store_schedule(self.db, arrival.payload, self.counts)
            return
        message = parse_device_message(arrival.topic, arrival.payload, self.verifier)
        if message is None:
            return
        if set_aside(self.db, message, arrival.received_utc):
            self.counts.suspect += 1
            return
        if message.channel == "events":
            store_event(self.db, message, arrival.received_utc, self.counts)
        else:
            store_state(self.db, message, arrival.received_utc, self.counts)

    def close(self) -> None:
        self.connection.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def collect_command(args: argparse.Namespace) -> int:
    path = Path(args.db)
    if not path.parent.exists():
        # SQLite says only "unable to open database file".
        raise InputError(
            f"--db {path}: the directory {path.parent} does not exist (make it, or give another)"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite writes its -wal and -shm files beside the database: the directory must be writable.
        raise InputError(
            f"--db {path}: this user may not write in {path.parent} (collect makes the file, "
            "and its -wal and -shm files, there): give a directory it may write in"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"--db {path}: this user may not write it (its permissions or owner)")
    # Before the database is made: a refused registry leaves no empty database behind.
    verifier = verifier_for(args.registry)
    # Until it collects, SIGTERM (by default the end on the spot) ends it as Ctrl-C does, so the
    # database it made is removed; once it collects, both stop it in order (_collect). Put back
    # only here: a stop that comes as the run ends must not pass for one while it connected.
    previous = {sig: signal.getsignal(sig) for sig in _STOPS}
    if not _ignored(signal.SIGTERM):
        signal.signal(signal.SIGTERM, _terminated)
    try:
        # Held from before the file is made until its removal is armed: a stop in between left
        # an empty file that every later run took for one that was there before.
        stops = _Stops()
        stops.hold()
        try:
            lock = _only_collector(path)
        except BaseException:
            stops.let_go()
            raise
        try:
            stops.let_go()  # a stop that came while it made and locked the file acts here
            return _collect(args, path, verifier)
        except BaseException:
            # The broker refused this run (a mistyped password, nothing listening), or it was
            # stopped while it connected: a database it made for nothing looks like a working one.
            if lock.created:
                stops.hold()  # a second Ctrl-C or SIGTERM must not cut the removal short
                try:
                    _remove_unused(lock)
                finally:
                    stops.let_go()  # one that came meanwhile ends the run now, as it would have
            raise
        finally:
            os.close(lock.fd)  # after the database is closed: SQLite's locks are on other handles
    finally:
        for sig, handler in previous.items():
            # None: a handler not set from Python, which Python cannot put back; the default is
            # nearer to it than collect's own, which would go on acting for a run that is over.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class _Stops:
    """SIGTERM and Ctrl-C held back (blocked) while collect makes, or removes, its database.

    One that comes meanwhile waits, and acts at :meth:`let_go` as it would have (the run ends).
    Only this thread holds them back: Python acts on signals in it alone, and no other thread
    is left to be given them (the broker's connection takes them only to this one, and is
    closed before a removal).
    """

    def __init__(self) -> None:
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # as the run found it
        self._late: BaseException | None = None

    def hold(self) -> None:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        except BaseException as exc:
            # One that had come just before is acted on here, held back already: it acts at
            # let_go instead, after what it must not cut short.
            self._late = exc

    def let_go(self) -> None:
        late, self._late = self._late, None
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # one held back acts here
        if late is not None:
            raise late


def _ignored(sig: int) -> bool:
    """Whoever started collect had it ignore ``sig`` (``nohup``, a supervisor): it stays so."""
    return signal.getsignal(sig) == signal.SIG_IGN


@record
class _Lock:
    fd: int
    path: Path  # the file itself, behind any symbolic link: where SQLite puts -wal and -shm
    # No file was at the path when this run began to open it (this run made the file, or another
    # that lost the lock to it did): the one case where a refused run may remove it.
    created: bool


def _only_collector(path: Path) -> _Lock:
    """Hold the database for this collector alone (released when the process ends, however).

    Two collectors on one file are nearly always one started twice, with one --client-id: they
    would take the broker's session from each other at every reconnect, each storing a part.
    flock() does not touch the POSIX locks SQLite takes on the same file, nor do readers
    (``report``) take it.
    """
    try:
        real = path.resolve()
    except (OSError, RuntimeError):
        real = path  # a loop of links: open() says so below
    # No file there now: whatever is found below was made during this run. Another collect
    # started with this one may make it, and lose the lock to this one (refused); the file is
    # then this run's to remove if it is refused too, or no run would (an empty database left).
    new = not os.path.lexists(real)
    for _attempt in range(100):
        created = True
        try:
            # O_EXCL: whether this run made the file is known, not guessed from a look before.
            fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = new
            try:
                fd = os.open(real, os.O_RDWR)
            except FileNotFoundError:
                continue  # removed since (a refused run's own new file): make it
            except OSError as exc:
                raise InputError(f"--db {path}: cannot open it ({exc.strerror})") from exc
        except OSError as exc:
            raise InputError(f"--db {path}: cannot open it ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise InputError(
                f"--db {path}: another receiver-admin collect is writing it; stop that one first "
                "(one collector a database, each collector with its own --client-id)"
            ) from exc
        # A refused run removes the file it made while holding this lock, then lets it go: a
        # collect that opened the file before the removal gets the lock on a file no longer at
        # the path, and would write into a new one no lock guards. Lock what is there now.
        if _same_file(fd, real):
            return _Lock(fd, real, created)
        os.close(fd)
    raise InputError(f"--db {path}: it keeps being removed or replaced while collect opens it")


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _remove_unused(lock: _Lock) -> None:
    """Remove the database made for this run, and its -wal and -shm, if it holds no row.

    Called with the lock held, so no other collect writes into it or can be about to: one that
    opened the file meanwhile finds the lock taken (refused), or takes it only once the file is
    gone, and then sees it is not the file at the path (:func:`_only_collector`). Only a file
    that was not there when this run began is removed (made by it, or by a collect started with
    it that lost the lock to it; one that was there before, even empty, is the operator's), and
    only while it holds nothing: a run that stored reports and acknowledged them keeps them,
    whatever stopped it after.
    """
    path = lock.path
    if not _same_file(lock.fd, path) or not _holds_nothing(path):
        return
    # The database last: cut short (a power cut), a database without its -wal is still an empty
    # database, while a -wal without its database is replayed by SQLite into the next one made
    # with that name.
    for name in (f"{path.name}-wal", f"{path.name}-shm", path.name):
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()  # a -wal or -shm SQLite removed itself at close


def _first_row(table: str) -> str:
    # A name read from sqlite_master, quoted as an identifier: no value of anyone's is in it.
    quoted = table.replace('"', '""')
    return f'SELECT 1 FROM "{quoted}" LIMIT 1'  # noqa: S608


def _holds_nothing(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            for (name,) in tables:
                if db.execute(_first_row(name)).fetchone() is not None:
                    return False
    except sqlite3.Error:
        return False  # not readable as a database: keep it for a person to look at
    return True


def _collect(args: argparse.Namespace, path: Path, verifier: ReportVerifier) -> int:
    collector: Collector | None = None
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    try:
        db = open_database(path)
    except DatabaseRefusedError as exc:
        raise InputError(f"--db {args.db}: {exc}") from exc
    except sqlite3.Error as exc:
        raise InputError(f"--db {args.db}: cannot open it as a database ({exc})") from exc
    try:  # right after the open: the database is closed before a refused run removes it
        options = BrokerOptions.from_args(args)
        collector = Collector(db, options, args.prefix, args.client_id, verifier)
        # Connected: from here SIGTERM and Ctrl-C end the run in order, keeping what it stored.
        # collect_command puts the handlers from before back.
        for sig in _STOPS:
            if not _ignored(sig):
                signal.signal(sig, stop)
    except BaseException:
        # Refused, or stopped while connecting: closed before the file is removed.
        try:
            if collector is not None:
                collector.close()
        finally:  # a second Ctrl-C in the close: the database is closed before its removal
            db.close()
        raise
    return _until_stopped(args, options, db, collector, stopping)


def _until_stopped(
    args: argparse.Namespace,
    options: BrokerOptions,
    db: sqlite3.Connection,
    collector: Collector,
    stopping: list[int],
) -> int:
    print(
        f"collecting {args.prefix}/dev/+/events and state into {args.db} "
        f"(session {args.client_id!r}); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + args.duration if args.duration else None
    failed: sqlite3.Error | None = None
    taken = False
    try:
        while not stopping and (deadline is None or time.monotonic() < deadline):
            # Another client took the session (a second collector of this --client-id): it gets
            # what this one has not acknowledged; what arrived here but is not stored stays
            # unacknowledged, so it waits on the broker for that one.
            taken = collector.connection.taken_over
            if taken:
                break
            # A broker that does not say so (Mosquitto before 2.0.15) only closes the session
            # each time the other takes it. A flaky network looks alike: warn, once, go on.
            short_lived = collector.connection.kept_closing()
            if short_lived:
                print(
                    f"receiver-admin: warning: collect: the broker at {options.where} keeps "
                    f"closing session {args.client_id!r} right after it connects "
                    f"({short_lived} times): is a second collect running with the same "
                    "--client-id? each collector needs its own",
                    file=sys.stderr,
                    flush=True,
                )
            collector.turn(0.2)
        if not taken:
            collector.turn(0.0)
    except sqlite3.Error as exc:
        # A batch that could not be committed was not acknowledged: the broker keeps it.
        failed = exc
    finally:
        try:
            collector.close()
        finally:
            db.close()
    c = collector.counts
    print(
        f"stored {c.events} events ({c.duplicates} repeated, {c.conflicts} conflicting), "
        f"{c.states} states, {c.schedules} schedules"
        + (f"; {c.suspect} reports set aside (unsigned, forged or replayed)" if c.suspect else ""),
        file=sys.stderr,
    )
    if taken:
        raise InputError(
            f"collect: another client took session {args.client_id!r} on {options.where} "
            "(a second collect with the same --client-id?); each collector needs its own "
            "--client-id"
        )
    if failed is not None:
        raise InputError(
            f"--db {args.db}: could not write it ({failed}): is the disk full? what was not "
            "written waits on the broker for the next run"
        )
    return 0


def add_parser(sub: Any, broker_options: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    collect = sub.add_parser(
        "collect", help="store every device's events and states in SQLite (persistent session)"
    )
    collect.add_argument("--db", required=True, help="the SQLite file (made if missing)")
    collect.add_argument(
        "--client-id",
        type=session_client_id,
        default=DEFAULT_CLIENT_ID,
        help=f"the session's client id: one per collector (default {DEFAULT_CLIENT_ID})",
    )
    collect.add_argument(
        "--duration", type=run_seconds, default=0.0, help="stop after this many seconds (0: never)"
    )
    collect.add_argument(
        "--registry", help="enrolled device keys: set aside reports the device did not sign"
    )
    broker_options(collect, True)
    collect.set_defaults(func=collect_command)

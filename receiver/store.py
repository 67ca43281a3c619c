"""Durable state on the SD card: replay floors, the trusted-time floor, the event counter, and
the intents of accepted commands not yet carried out (written with their floors).

SQLite in WAL mode with ``synchronous=FULL``: a committed transaction survives a power cut, a
half-written one is rolled back on the next open. A store that SQLite cannot read is moved
aside (never deleted) and a fresh one started; the caller learns of it through
``recovered_from`` and reports it.

A command's floors can be committed in the background (``save_floors(..., wait=False)``): the
commit, whose flush to the card is most of its cost, runs on the store's commit thread while
the caller prepares what follows (signing the report, finding the file), and :meth:`settle`
waits for it. Every other use of the store settles first, so the store is never used by two
threads at once, and the caller settles before anything the floors must precede (a sound, the
relay, a report leaving).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from receiver.core.admission import MAX_STOP_IDS, STOP_ID_STREAM
from receiver.core.state import Intent
from receiver.durable import open_durable
from receiver.errors import StoreError

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS floors (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL,
                                   digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, version INTEGER NOT NULL,
                                      body BLOB NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS intents (ref TEXT PRIMARY KEY, body BLOB NOT NULL,
                                    window_end REAL NOT NULL, stage TEXT NOT NULL);
"""
DONE_KEEP_S: Final = 7 * 86400.0
# Event numbers are reserved in blocks so that a busy day costs few writes; after a crash the
# numbering jumps to the next block, which keeps "n never goes back" true.
EVENT_BLOCK: Final = 100


class _Commit:
    """One transaction's COMMIT, run on the store's commit thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.db"
        try:
            self._db, self.recovered_from = open_durable(self.path, SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use state directory {state_dir}: {exc}") from exc
        self._event_next = 0
        self._event_reserved = 0
        self._commits: queue.SimpleQueue[_Commit | None] = queue.SimpleQueue()
        self._committing: _Commit | None = None
        self._writing = False  # inside a transaction of ours (its reads need no settle)
        self._commit_thread: threading.Thread | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.settle()
        if self._commit_thread is not None:
            self._commits.put(None)
            self._commit_thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def settle(self) -> None:
        """Wait for a commit running in the background, if any; raise its error (the
        transaction was rolled back: nothing of it is on disk)."""
        commit, self._committing = self._committing, None
        if commit is None:
            return
        commit.done.wait()
        if commit.error is not None:
            raise commit.error

    # --- replay floors and trusted time ---------------------------------------------------

    def floors(self) -> dict[str, tuple[int, str]]:
        self.settle()
        rows = self._db.execute("SELECT stream, seq, digest FROM floors").fetchall()
        return {stream: (int(seq), str(digest)) for stream, seq, digest in rows}

    def time_floor(self) -> float:
        return float(self._get("time_floor") or 0.0)

    def save_floors(
        self,
        changed: dict[str, tuple[int, str]],
        time_floor: float,
        intent: Intent | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """One durable transaction, with the intent of the command the floors admit (if any):
        after a crash the store has both or neither. Returns only once it is on disk, or with
        ``wait=False`` as soon as its commit is under way (see :meth:`settle`)."""
        with self._transaction(wait=wait):
            if intent is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO intents (ref, body, window_end, stage) "
                    "VALUES (?, ?, ?, ?)",
                    (intent.ref, intent.body, intent.window_end_utc, intent.stage),
                )
            self._db.executemany(
                "INSERT INTO floors (stream, seq, digest) VALUES (?, ?, ?) "
                "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, digest = excluded.digest "
                "WHERE excluded.seq >= floors.seq",
                [(stream, seq, digest) for stream, (seq, digest) in changed.items()],
            )
            self._put("time_floor", repr(max(time_floor, self.time_floor())))
            if any(stream.startswith(STOP_ID_STREAM) for stream in changed):
                # Ids named by stops: keep the newest, so the table cannot grow without bound;
                # the same ones as the core's floors (ties broken by the id), so that a restart
                # forgets nothing the running daemon remembered.
                named = STOP_ID_STREAM + "%"  # the prefix has no LIKE wildcard of its own
                self._db.execute(
                    "DELETE FROM floors WHERE stream LIKE ? AND stream NOT IN "
                    "(SELECT stream FROM floors WHERE stream LIKE ? "
                    "ORDER BY seq DESC, stream DESC LIMIT ?)",
                    (named, named, MAX_STOP_IDS),
                )

    def reset_floor(self) -> float | None:
        """The first trusted instant after this store was created; None until there is one."""
        value = self._get("reset_floor")
        return None if value is None else float(value)

    def save_reset_floor(self, utc: float) -> None:
        with self._transaction():
            if self._get("reset_floor") is None:
                self._put("reset_floor", repr(utc))

    def save_time_floor(self, utc: float) -> None:
        """Remember a trusted time, so that after a reboot without a clock it is the floor."""
        self.save_floors({}, utc)

    # --- intents: commands accepted and not yet carried out ---------------------------------

    def intents(self) -> tuple[Intent, ...]:
        """The open intents, oldest first."""
        self.settle()
        rows = self._db.execute(
            "SELECT ref, body, window_end, stage FROM intents ORDER BY rowid"
        ).fetchall()
        return tuple(
            Intent(str(ref), bytes(body), float(end), str(stage)) for ref, body, end, stage in rows
        )

    def mark_intent_started(self, ref: str) -> None:
        """Note that the command's sound is being started, just before it is.

        Committed without waiting for the card (``synchronous=NORMAL`` for this one
        transaction: well under a millisecond instead of a flush that can take tens on a busy
        card, right before a start that may be due at an instant). A crash or kill of the
        daemon cannot lose it (the kernel has it); a power cut before the store's next full
        commit can, and the play may then be carried out again from its start after the
        reboot if its window is still open. Never a corrupt store: WAL rolls it back whole.
        """
        self.settle()
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction():
                self._db.execute("UPDATE intents SET stage = 'started' WHERE ref = ?", (ref,))
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def forget_intent(self, ref: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM intents WHERE ref = ?", (ref,))

    # --- the keyring ----------------------------------------------------------------------

    def trust(self) -> tuple[int, bytes, str] | None:
        """The accepted trust document's (version, verified payload, digest), if any."""
        version = self._get("trust_version")
        body = self._get("trust_body")
        digest = self._get("trust_digest")
        if version is None or body is None or digest is None:
            return None
        return int(version), bytes.fromhex(body), digest

    def save_trust(self, version: int, body: bytes, digest: str) -> None:
        with self._transaction():
            current = self._get("trust_version")
            if current is not None and int(current) >= version:
                return  # a trust version never goes back
            self._put("trust_version", str(version))
            self._put("trust_body", body.hex())
            self._put("trust_digest", digest)

    # --- schedules -------------------------------------------------------------------------

    def schedules(self) -> dict[str, tuple[int, bytes, str]]:
        """Schedules in force: id -> (version, verified payload, digest)."""
        self.settle()
        rows = self._db.execute("SELECT id, version, body, digest FROM schedules").fetchall()
        return {
            sid: (int(version), bytes(body), str(digest)) for sid, version, body, digest in rows
        }

    def save_schedule(self, schedule_id: str, version: int, body: bytes, digest: str) -> None:
        """The schedule and its replay floor, in one transaction; never to an older version."""
        with self._transaction():
            row = self._db.execute(
                "SELECT version FROM schedules WHERE id = ?", (schedule_id,)
            ).fetchone()
            if row is not None and int(row[0]) >= version:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO schedules (id, version, body, digest) VALUES (?, ?, ?, ?)",
                (schedule_id, version, body, digest),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO floors (stream, seq, digest) VALUES (?, ?, ?)",
                (f"schedule:{schedule_id}", version, digest),
            )

    def done(self) -> frozenset[str]:
        self.settle()
        rows = self._db.execute("SELECT key FROM done").fetchall()
        return frozenset(str(key) for (key,) in rows)

    def save_done(self, key: str) -> None:
        now = time.time()
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO done (key, at) VALUES (?, ?)", (key, now))
            self._db.execute("DELETE FROM done WHERE at < ?", (now - DONE_KEEP_S,))

    # --- event numbers --------------------------------------------------------------------

    def next_event_number(self) -> int:
        if self._event_next >= self._event_reserved:
            start = max(int(self._get("event_reserved") or 0), self._event_next)
            with self._transaction():
                self._put("event_reserved", str(start + EVENT_BLOCK))
            self._event_next, self._event_reserved = start, start + EVENT_BLOCK
        self._event_next += 1
        return self._event_next

    # --- plumbing -------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        if not self._writing:
            self.settle()
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @contextlib.contextmanager
    def _transaction(self, *, wait: bool = True) -> Iterator[None]:
        self.settle()
        self._db.execute("BEGIN IMMEDIATE")
        self._writing = True
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._writing = False
        if wait:
            self._db.execute("COMMIT")
            return
        if self._commit_thread is None:
            self._commit_thread = threading.Thread(
                target=self._run_commits, name="store-commit", daemon=True
            )
            self._commit_thread.start()
        self._committing = _Commit()
        self._commits.put(self._committing)

    def _run_commits(self) -> None:
        """The commit thread: the only user of the connection while a commit is under way (the
        loop waits in :meth:`settle` before it uses the store again)."""
        while (commit := self._commits.get()) is not None:
            try:
                self._db.execute("COMMIT")
            except BaseException as exc:  # handed to settle(), in the loop's thread
                commit.error = exc
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            commit.done.set()

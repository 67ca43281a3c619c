"""The events outbox: events kept on disk until the broker has acknowledged them.

Owns its own SQLite file (``outbox.db``, apart from the store's floors, so a corrupt outbox never
costs them), bounded at ``capacity`` events: when full, the oldest are dropped and counted in
``dropped_total``. Events added within one :meth:`Outbox.batch` are committed together, once.
Why, and what it costs on an SD card: ``docs/adapters.md``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from receiver.durable import open_durable
from receiver.errors import StoreError

__all__ = ["DEFAULT_CAPACITY", "Outbox", "OutboxError"]

DEFAULT_CAPACITY: Final = 10_000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (n INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(StoreError):
    """The outbox file cannot be used at all (permissions, disk full, bad capacity)."""


class Outbox:
    """A durable, bounded FIFO of ``(n, payload)`` events, ordered by ``n``."""

    def __init__(self, path: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise OutboxError(f"outbox capacity must be at least 1, not {capacity}")
        self.path = path
        self.capacity = capacity
        self._lock = threading.RLock()  # a batch holds it while its adds take it again
        self._batching = False
        try:
            self._db, self.recovered_from = open_durable(path, SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        self._count = int(count)

    # --- the API ---------------------------------------------------------------------------

    def add(self, n: int, payload: bytes) -> int:
        """Store event ``n`` durably; return how many of the oldest events were dropped.

        Returns only after the transaction is committed (on disk), or inside :meth:`batch`
        once the batch is. Adding an ``n`` that is
        already stored replaces its payload. When the outbox is over its capacity afterwards,
        the events with the lowest ``n`` are deleted in the same transaction and counted in
        :attr:`dropped_total` (which can include the one just added, if it is the oldest).
        """
        with self._lock, _as_outbox_error("store an event in"):
            with self._transaction():
                known = self._db.execute("SELECT 1 FROM events WHERE n = ?", (n,)).fetchone()
                self._db.execute(
                    "INSERT INTO events (n, payload) VALUES (?, ?) "
                    "ON CONFLICT(n) DO UPDATE SET payload = excluded.payload",
                    (n, bytes(payload)),
                )
                count = self._count + (0 if known else 1)
                dropped = max(0, count - self.capacity)
                if dropped:
                    self._db.execute(
                        "DELETE FROM events WHERE n IN (SELECT n FROM events ORDER BY n LIMIT ?)",
                        (dropped,),
                    )
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('dropped_total', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (dropped,),
                    )
            self._count = count - dropped
        return dropped

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the ``add`` and ``ack`` calls made inside into one transaction, committed (on
        disk) when the block ends; rolled back, all of it, if the block raises. Nested: joins
        the outer batch."""
        with self._lock:
            if self._batching:
                yield
                return
            count = self._count
            with _as_outbox_error("start a transaction in"):
                self._db.execute("BEGIN IMMEDIATE")
            self._batching = True
            try:
                yield
                with _as_outbox_error("commit"):
                    self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._count = count
                raise
            finally:
                self._batching = False

    def pending(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        """Stored events, lowest ``n`` first; at most ``limit`` of them if given."""
        with self._lock:
            rows = self._db.execute(
                "SELECT n, payload FROM events ORDER BY n LIMIT ?",
                (-1 if limit is None else max(0, limit),),
            ).fetchall()
        return [(int(n), bytes(payload)) for n, payload in rows]

    def ack(self, n: int) -> None:
        """Delete event ``n`` (the broker has it). Unknown ``n``: nothing happens."""
        with self._lock, _as_outbox_error("remove an event from"):
            with self._transaction():
                deleted = self._db.execute("DELETE FROM events WHERE n = ?", (n,)).rowcount
            self._count -= max(0, deleted)

    def __len__(self) -> int:
        return self._count

    @property
    def dropped_total(self) -> int:
        """Events dropped for lack of room since this outbox file was created (persisted)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    # --- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._batching:  # the batch commits
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


@contextlib.contextmanager
def _as_outbox_error(what: str) -> Iterator[None]:
    """SQLite's errors (a locked, full or failing card) as the store family's."""
    try:
        yield
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot {what} the outbox: {exc}") from exc

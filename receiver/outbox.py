"""The events outbox: events kept on disk until the broker has acknowledged them.

The protocol (``docs/protocol.md`` §11) asks that a day
offline loses no report of what played. The runtime therefore stores every event here *before*
handing it to the MQTT link, and deletes it when the link reports the broker's PUBACK
(:meth:`MqttLink.publish(..., on_ack=...) <receiver.mqtt_client.MqttLink.publish>`). After a
restart, whatever is still here is sent again, in ``n`` order.

Storage: its own SQLite file (not the store's ``state.db``: the outbox is written on every event
and emptied on every acknowledgement, the store holds the replay floors, and a corrupt outbox
must never cost the floors), in WAL mode with ``synchronous=FULL``: :meth:`Outbox.add` returns
only once the event is on disk. A file SQLite cannot read is moved aside (never deleted) and a
new one started; ``recovered_from`` says where it went, so the runtime can report it.

Bounded: at most ``capacity`` events (10000 by default; an event is about 200 bytes, so about
2 MB). When full, :meth:`Outbox.add` **drops the oldest** events and counts them in
``dropped_total``, which is persisted. Why the oldest: after a long outage the newest reports are
the ones that matter (what is playing now, the last failures, the latest rejections), while
the oldest describe a situation that has long changed; and since ``n`` never goes back, central
sees exactly where the gap is, and the device's counter says how many were lost.

Costs on an SD card: one committed transaction per :meth:`~Outbox.add` and one per
:meth:`~Outbox.ack`. An acknowledgement lost in a power cut only makes the event be sent twice
(QoS 1 is at least once anyway; central deduplicates on device and ``n``).

Thread safety: every method takes an internal lock, so the outbox may be used from any thread,
but the runtime should call it from its loop thread only (``on_ack`` callbacks must only queue).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from receiver.durable import open_durable

__all__ = ["DEFAULT_CAPACITY", "Outbox", "OutboxError"]

DEFAULT_CAPACITY: Final = 10_000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (n INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be used at all (permissions, disk full, bad capacity)."""


class Outbox:
    """A durable, bounded FIFO of ``(n, payload)`` events, ordered by ``n``."""

    def __init__(self, path: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise OutboxError(f"outbox capacity must be at least 1, not {capacity}")
        self.path = path
        self.capacity = capacity
        self._lock = threading.Lock()
        try:
            self._db, self.recovered_from = open_durable(path, SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        self._count = int(count)

    # --- the API ---------------------------------------------------------------------------

    def add(self, n: int, payload: bytes) -> int:
        """Store event ``n`` durably; return how many of the oldest events were dropped.

        Returns only after the transaction is committed (on disk). Adding an ``n`` that is
        already stored replaces its payload. When the outbox is over its capacity afterwards,
        the events with the lowest ``n`` are deleted in the same transaction and counted in
        :attr:`dropped_total` (which can include the one just added, if it is the oldest).
        """
        with self._lock:
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
        with self._lock:
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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

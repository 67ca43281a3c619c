"""Opening a SQLite file for state that must survive power cuts.

WAL mode with ``synchronous=FULL``: a committed transaction is on the card, a half-written one
is rolled back at the next open. A file SQLite cannot read (or whose quick check fails) is moved
aside with its WAL files — never deleted, so it can be examined — and a fresh one is started;
the caller is told where the old one went and reports it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def open_durable(path: Path, schema: str) -> tuple[sqlite3.Connection, Path | None]:
    """The connection, and where a corrupt file was moved (None if it was fine)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return _open(path, schema), None
    except sqlite3.DatabaseError:
        aside = _move_aside(path)
        return _open(path, schema), aside


def _open(path: Path, schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")  # wait for a reader (e.g. `sqlite3` by hand)
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        db.executescript(schema)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            os.replace(source, Path(str(aside) + suffix))
    return aside

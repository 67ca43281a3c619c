"""The events outbox on a real SQLite file: durable, ordered, bounded, recovers from corruption."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from receiver.outbox import Outbox, OutboxError


def event(n: int) -> bytes:
    return b'{"n":%d,"kind":"started"}' % n


def test_events_survive_a_reopen_in_n_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    outbox = Outbox(path)
    for n in (3, 1, 2):
        assert outbox.add(n, event(n)) == 0
    assert len(outbox) == 3
    outbox.close()

    again = Outbox(path)
    assert again.recovered_from is None
    assert len(again) == 3
    assert again.pending() == [(1, event(1)), (2, event(2)), (3, event(3))]
    assert again.pending(limit=2) == [(1, event(1)), (2, event(2))]
    assert again.pending(limit=0) == []
    again.close()


def test_an_add_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    """A process killed right after add() returned (no close, no checkpoint) loses nothing."""
    path = tmp_path / "outbox.db"
    child = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from receiver.outbox import Outbox
        outbox = Outbox(Path(sys.argv[1]))
        outbox.add(7, b"seven")
        os._exit(0)  # no close(), no atexit: as if the power went
        """
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", child, str(path)], cwd=root, check=True, timeout=30)
    outbox = Outbox(path)
    assert outbox.pending() == [(7, b"seven")]
    outbox.close()


def test_ack_removes_an_event_for_good(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    for n in range(1, 5):
        outbox.add(n, event(n))
    outbox.ack(2)
    outbox.ack(2)  # twice (a duplicate PUBACK callback): nothing more happens
    outbox.ack(99)  # unknown
    assert len(outbox) == 3
    assert [n for n, _ in outbox.pending()] == [1, 3, 4]
    outbox.close()

    again = Outbox(path)
    assert [n for n, _ in again.pending()] == [1, 3, 4]
    again.close()


def test_adding_the_same_n_again_replaces_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", capacity=2)
    outbox.add(1, b"first")
    outbox.add(1, b"again")
    assert len(outbox) == 1
    assert outbox.pending() == [(1, b"again")]
    assert outbox.add(2, b"two") == 0
    outbox.close()


def test_over_capacity_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, capacity=3)
    assert [outbox.add(n, event(n)) for n in range(1, 4)] == [0, 0, 0]
    assert outbox.add(4, event(4)) == 1
    assert outbox.add(5, event(5)) == 1
    assert [n for n, _ in outbox.pending()] == [3, 4, 5]
    assert len(outbox) == 3
    assert outbox.dropped_total == 2
    outbox.ack(3)
    assert outbox.add(6, event(6)) == 0  # room again after an ack
    outbox.close()

    # The counter is persisted; a smaller capacity drops the surplus at the next add.
    smaller = Outbox(path, capacity=1)
    assert smaller.dropped_total == 2
    assert smaller.add(7, event(7)) == 3
    assert smaller.pending() == [(7, event(7))]
    assert smaller.dropped_total == 5
    # An event older than everything kept is itself the oldest: it is the one dropped.
    assert smaller.add(1, event(1)) == 1
    assert smaller.pending() == [(7, event(7))]
    assert smaller.dropped_total == 6
    smaller.close()


def test_a_corrupt_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    outbox.add(1, event(1))
    outbox.close()
    for suffix in ("-wal", "-shm"):  # as a clean close leaves it: one file
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(b"this is not an SQLite database, the SD card ate it" * 100)

    recovered = Outbox(path)
    assert recovered.recovered_from is not None
    assert recovered.recovered_from.name.startswith("outbox.db.corrupt-")
    assert recovered.recovered_from.read_bytes().startswith(b"this is not an SQLite")
    assert len(recovered) == 0
    assert recovered.dropped_total == 0
    assert recovered.add(2, event(2)) == 0
    recovered.close()

    again = Outbox(path)
    assert again.recovered_from is None
    assert again.pending() == [(2, event(2))]
    again.close()


def test_a_damaged_page_is_found_by_the_check_and_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    for n in range(1, 400):
        outbox.add(n, event(n) * 20)
    outbox.close()
    db = sqlite3.connect(path)  # fold the WAL into the main file, then damage a data page
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[3 * page : 3 * page + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))

    recovered = Outbox(path)
    assert recovered.recovered_from is not None
    assert len(recovered) == 0
    recovered.close()


def test_bad_capacity_and_unusable_directory_are_errors(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="capacity"):
        Outbox(tmp_path / "outbox.db", capacity=0)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="cannot use the outbox"):
        Outbox(blocker / "outbox.db")


def _commits(outbox: Outbox) -> list[str]:
    """The COMMIT statements the outbox's connection runs from now on."""
    seen: list[str] = []
    outbox._db.set_trace_callback(
        lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None
    )
    return seen


def test_a_batch_is_one_durable_write_and_is_on_disk_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, capacity=5)
    commits = _commits(outbox)
    reader = sqlite3.connect(path)
    with outbox.batch():
        for n in range(1, 9):
            outbox.add(n, event(n))
        outbox.ack(8)
        with outbox.batch():  # joins the outer one
            outbox.add(9, event(9))
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    assert len(commits) == 1
    assert [n for n, _ in outbox.pending()] == [4, 5, 6, 7, 9]
    assert len(outbox) == 5
    assert outbox.dropped_total == 3
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone() == (5,)
    outbox.add(10, event(10))  # outside a batch: one write per add, as before
    assert len(commits) == 2
    reader.close()
    outbox.close()


def test_a_batch_that_fails_leaves_nothing_of_itself(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.add(1, event(1))
    with pytest.raises(RuntimeError, match="power"), outbox.batch():
        outbox.add(2, event(2))
        outbox.ack(1)
        raise RuntimeError("power cut")
    assert outbox.pending() == [(1, event(1))]
    assert len(outbox) == 1
    outbox.add(3, event(3))
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert [n for n, _ in reopened.pending()] == [1, 3]
    reopened.close()

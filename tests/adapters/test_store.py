"""The durable store: floors survive reopening, a corrupt file is moved aside, n never goes back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from receiver.core.admission import MAX_STOP_IDS, STOP_ID_STREAM
from receiver.core.state import Intent
from receiver.store import EVENT_BLOCK, Store


def test_floors_and_time_floor_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_floors({"cmd:aa": (5, "d5")}, 1000.0)
    store.save_floors({"cmd:aa": (7, "d7"), "cmd:bb": (1, "x")}, 900.0)
    store.close()
    again = Store(tmp_path)
    assert again.floors() == {"cmd:aa": (7, "d7"), "cmd:bb": (1, "x")}
    assert again.time_floor() == 1000.0  # the floor never goes back
    assert again.recovered_from is None


def test_a_floor_never_moves_down(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_floors({"cmd:aa": (9, "d9")}, 0.0)
    store.save_floors({"cmd:aa": (3, "d3")}, 0.0)
    assert store.floors() == {"cmd:aa": (9, "d9")}


def test_the_store_keeps_the_stop_ids_the_core_keeps(tmp_path: Path) -> None:
    """The newest MAX_STOP_IDS by the stop's instant, ties broken by the id, as the core's
    floors keep them (tests/core/test_freshness_and_trust.py): a restart forgets nothing the
    running daemon remembered."""
    store = Store(tmp_path)
    for number in range(MAX_STOP_IDS + 3):
        store.save_floors({f"{STOP_ID_STREAM}b-{number:03d}": (1000, f"s{number}")}, 0.0)
    store.save_floors({f"{STOP_ID_STREAM}late": (2000, "late")}, 0.0)
    kept = sorted(stream for stream in store.floors() if stream.startswith(STOP_ID_STREAM))
    newest = [f"{STOP_ID_STREAM}b-{n:03d}" for n in range(4, MAX_STOP_IDS + 3)]
    assert kept == sorted([*newest, f"{STOP_ID_STREAM}late"])


def test_a_corrupt_store_is_moved_aside_and_a_fresh_one_started(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    store = Store(tmp_path)
    assert store.recovered_from is not None
    assert store.recovered_from.read_bytes().startswith(b"this is not sqlite")
    assert store.floors() == {}
    store.save_floors({"cmd:aa": (1, "d")}, 0.0)
    assert Store(tmp_path).floors() == {"cmd:aa": (1, "d")}


def test_event_numbers_only_go_up_across_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = [store.next_event_number() for _ in range(3)]
    store.close()  # as after a crash: the rest of the reserved block is skipped
    again = Store(tmp_path)
    later = [again.next_event_number() for _ in range(EVENT_BLOCK + 2)]
    assert first == [1, 2, 3]
    assert later[0] == EVENT_BLOCK + 1
    assert later == sorted(set(later))


def test_an_intent_is_stored_with_its_floor_and_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = Intent("play-1", b'{"id": "play-1"}', 2000.0)
    second = Intent("vol-2", b'{"id": "vol-2"}', 3000.0)
    store.save_floors({"cmd:aa": (1, "d1")}, 1000.0, first)
    store.save_floors({"cmd:aa": (2, "d2")}, 1000.0, second)
    store.mark_intent_started("play-1")
    store.close()
    again = Store(tmp_path)
    assert again.intents() == (Intent("play-1", first.body, 2000.0, "started"), second)
    again.forget_intent("vol-2")
    again.forget_intent("never-stored")  # nothing to forget: no error
    again.close()
    assert Store(tmp_path).intents() == (Intent("play-1", first.body, 2000.0, "started"),)


def test_a_floor_and_its_intent_are_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path)
    bad = Intent("x", None, 1.0)  # type: ignore[arg-type]  # NOT NULL: the insert fails
    with pytest.raises(sqlite3.IntegrityError):
        store.save_floors({"cmd:aa": (1, "d1")}, 1000.0, bad)
    assert store.floors() == {} and store.intents() == ()  # neither was stored


def test_floors_committed_in_the_background_are_on_disk_once_settled(tmp_path: Path) -> None:
    """``save_floors(wait=False)`` returns while the commit (the flush) runs on the store's
    commit thread; ``settle`` waits for it, and every other use of the store settles first."""
    store = Store(tmp_path)
    intent = Intent("play-1", b'{"id": "play-1"}', 2000.0)
    store.save_floors({"cmd:aa": (1, "d1")}, 1000.0, intent, wait=False)
    store.settle()
    on_disk = Store(tmp_path)  # another connection: sees only what is committed
    assert on_disk.floors() == {"cmd:aa": (1, "d1")} and on_disk.intents() == (intent,)
    on_disk.close()
    store.save_floors({"cmd:aa": (2, "d2")}, 1500.0, wait=False)
    assert store.floors() == {"cmd:aa": (2, "d2")}  # read after the commit, not beside it
    store.save_floors({"cmd:aa": (3, "d3")}, 1600.0, wait=False)
    store.mark_intent_started("play-1")  # a write waits for the commit under way
    assert store.time_floor() == 1600.0
    store.save_floors({"cmd:aa": (4, "d4")}, 1700.0, wait=False)
    store.close()  # and closing waits for it too
    again = Store(tmp_path)
    assert again.floors() == {"cmd:aa": (4, "d4")} and again.time_floor() == 1700.0
    assert again.intents() == (Intent("play-1", intent.body, 2000.0, "started"),)


class _CommitFails:
    """The store's connection, but its COMMIT fails as on a card that stopped answering."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_background_commit_that_fails_is_raised_at_settle_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.save_floors({"cmd:aa": (1, "d1")}, 1000.0)
    real = store._db
    store._db = _CommitFails(real)  # type: ignore[assignment]
    store.save_floors({"cmd:aa": (2, "d2")}, 2000.0, Intent("p", b"{}", 3000.0), wait=False)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store.settle()
    store._db = real
    assert store.floors() == {"cmd:aa": (1, "d1")} and store.intents() == ()  # rolled back
    store.save_floors({"cmd:aa": (3, "d3")}, 2000.0)  # and the store goes on
    store.close()
    assert Store(tmp_path).floors() == {"cmd:aa": (3, "d3")}

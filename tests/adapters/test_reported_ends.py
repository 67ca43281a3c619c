"""After a crash, a report on disk says what ended, even when the write that retires it did not
follow: the report goes to the outbox first (a crash between the two must never lose it), then
the store's intent or done mark is retired in a second write. A SIGKILL between the two left
the occurrence of a programme without its done mark, and the restarted daemon played it again
(tests/e2e/test_offline_day.py, once in CI); a command's intent stayed open and would be
reported ``failed`` after its ``finished``. At start the assembly retires both from the outbox.
"""

from __future__ import annotations

import json
from pathlib import Path

from receiver.assembly import retire_reported_ends
from receiver.core.intents import Intent
from receiver.device_key import EVENT_TYPE, load_or_create_device_key, seal_report
from receiver.outbox import Outbox
from receiver.store import Store

OCCURRENCE = "morning/e30/2027-01-11"


def event(state: Path, kind: str, ref: str) -> bytes:
    key, _ = load_or_create_device_key(state, "dev-1")
    body = {"device": "dev-1", "n": 1, "kind": kind, "ref": ref, "ts": "2027-01-11T05:30:00Z"}
    return seal_report(key, EVENT_TYPE, json.dumps(body, separators=(",", ":")).encode())


def test_what_a_stored_report_ended_is_retired_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state)
    store.save_floors({}, 0.0, Intent("cmd-1", b"{}", 2e9, "started"))
    store.save_floors({}, 0.0, Intent("cmd-2", b"{}", 2e9, "accepted"))
    store.save_floors({}, 0.0, Intent("cmd-3", b"{}", 2e9, "started"))
    outbox = Outbox(state / "outbox.db")
    for n, (kind, ref) in enumerate(
        [
            ("accepted", "cmd-2"),  # accepted, not ended: still to be carried out
            ("finished", "cmd-1"),
            ("stopped", "cmd-3"),
            ("started", "morning/e31/2027-01-11"),  # still playing when the daemon died
            ("finished", OCCURRENCE),
        ],
        start=1,
    ):
        outbox.add(n, event(state, kind, ref))
    outbox.add(6, b"not an envelope")  # an unreadable row is left for the link, not fatal

    retired = retire_reported_ends(store, outbox)

    assert sorted(retired) == ["cmd-1", "cmd-3", OCCURRENCE]
    assert [intent.ref for intent in store.intents()] == ["cmd-2"]
    assert store.done() == frozenset({OCCURRENCE})
    assert len(outbox) == 6  # the reports themselves still go to central
    assert retire_reported_ends(store, outbox) == []  # nothing more the second time
    store.close()
    outbox.close()

"""The loop's inbox: our own reports are never dropped; a flood keeps its newest messages."""

from __future__ import annotations

from receiver.core.events import MessageReceived, PlaybackEnded
from receiver.inbox import Inbox


def test_a_full_message_lane_drops_the_oldest_and_counts_them() -> None:
    inbox = Inbox(message_capacity=3)
    for i in range(5):
        inbox.put_message(MessageReceived("t", bytes([i])))
    inbox.put_report(PlaybackEnded(7))
    assert inbox.take_dropped() == 2
    assert inbox.take_dropped() == 0
    got = [inbox.get(0) for _ in range(5)]
    assert got[0] == PlaybackEnded(7)  # reports first
    assert [m.payload for m in got[1:4] if isinstance(m, MessageReceived)] == [
        b"\x02",
        b"\x03",
        b"\x04",
    ]
    assert got[4] is None


def test_wake_returns_none_at_once() -> None:
    inbox = Inbox()
    inbox.wake()
    assert inbox.get(10.0) is None

"""The loop's inbox: our own reports are never dropped; a flood keeps its newest messages; a
flood naming one key neither delays nor pushes out a command naming another; the key a message
names is guessed cheaply, the same as the strict parser reads it in a real envelope, and junk of
any shape names none."""

from __future__ import annotations

import pytest

from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.core.envelope import MAX_MESSAGE_BYTES, parse_envelope
from receiver.core.events import Event, MessageReceived, PlaybackEnded
from receiver.inbox import Inbox, named_key


def drain(inbox: Inbox) -> list[Event]:
    out = []
    while (event := inbox.get_nowait()) is not None:
        out.append(event)
    return out


def payloads(events: list[Event]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, MessageReceived)]


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


def test_messages_naming_a_known_key_go_ahead_of_junk_and_the_junk_cannot_push_them_out() -> None:
    inbox = Inbox(message_capacity=2, plausible_capacity=4)
    inbox.put_message(MessageReceived("t", b"real"), "op")
    for i in range(10):
        assert inbox.put_message(MessageReceived("t", b"junk%d" % i)) is not None or i < 2
    assert payloads(drain(inbox)) == [b"real", b"junk8", b"junk9"]
    assert inbox.take_dropped() == 8


def test_a_flood_naming_one_key_does_not_delay_a_command_naming_another() -> None:
    inbox = Inbox(plausible_capacity=101)
    for i in range(100):
        inbox.put_message(MessageReceived("t", b"forged%d" % i), "op")
    inbox.put_message(MessageReceived("t", b"emergency stop"), "emergency")
    first_two = [inbox.get_nowait(), inbox.get_nowait()]
    # Round robin: the other key's command is taken second, not after the 100 forgeries.
    assert payloads([e for e in first_two if e is not None]) == [b"forged0", b"emergency stop"]
    assert len(drain(inbox)) == 99


def test_a_flood_naming_one_key_cannot_push_out_a_command_naming_another() -> None:
    inbox = Inbox(plausible_capacity=8)  # all key lanes together
    inbox.put_message(MessageReceived("t", b"emergency stop"), "emergency")
    dropped = [inbox.put_message(MessageReceived("t", b"forged%d" % i), "op") for i in range(50)]
    assert [m.payload for m in dropped if m is not None] == [b"forged%d" % i for i in range(43)]
    # A command of a key with nothing waiting still gets in, at the flood's expense.
    assert inbox.put_message(MessageReceived("t", b"operator 2 stop"), "op-2") == (
        MessageReceived("t", b"forged43")
    )
    assert inbox.take_dropped() == 44
    got = payloads(drain(inbox))
    assert got[:3] == [b"emergency stop", b"forged44", b"operator 2 stop"]  # in turn
    assert got[3:] == [b"forged%d" % i for i in range(45, 50)]


def test_a_real_command_survives_as_many_later_messages_naming_its_key_as_the_lane_holds() -> None:
    capacity = 8
    inbox = Inbox(plausible_capacity=capacity)
    inbox.put_message(MessageReceived("t", b"seq 1"), "op")
    inbox.put_message(MessageReceived("t", b"seq 2"), "op")
    for i in range(capacity - 2):  # the inbox is full now, and nothing was shed
        inbox.put_message(MessageReceived("t", b"forged%d" % i), "op")
    assert inbox.take_dropped() == 0
    got = payloads(drain(inbox))
    assert got[:2] == [b"seq 1", b"seq 2"]  # one signer's commands keep their order
    # One more naming that key before the loop's turn, and the oldest goes (counted).
    for i in range(capacity + 1):
        inbox.put_message(MessageReceived("t", b"forged%d" % i), "op")
    assert inbox.take_dropped() == 1


def test_a_qos_0_flood_naming_a_key_neither_delays_nor_pushes_out_its_qos_1_command() -> None:
    # Central publishes at QoS 1; forgeries at QoS 0 cost the attacker nothing to send, as fast
    # as the link carries them. They wait behind what came at QoS 1, and go first when full.
    inbox = Inbox(plausible_capacity=8)
    for i in range(5):
        inbox.put_message(MessageReceived("t", b"forged%d" % i), "op")
    inbox.put_message(MessageReceived("t", b"seq 1", mid=1, qos=1), "op")
    dropped = [inbox.put_message(MessageReceived("t", b"forged%d" % i), "op") for i in range(5, 50)]
    assert [m.payload for m in dropped if m is not None] == [b"forged%d" % i for i in range(43)]
    pushed_out = inbox.put_message(MessageReceived("t", b"seq 2", mid=2, qos=1), "op")
    assert pushed_out is not None and pushed_out.payload == b"forged43"
    got = payloads(drain(inbox))
    assert got[:2] == [b"seq 1", b"seq 2"]  # taken first, in their order
    assert got[2:] == [b"forged%d" % i for i in range(44, 50)]
    assert inbox.take_dropped() == 44


def test_qos_1_messages_filling_the_key_lanes_are_not_pushed_out_by_qos_0_ones() -> None:
    inbox = Inbox(plausible_capacity=4)
    for i in range(4):
        assert inbox.put_message(MessageReceived("t", b"q1 %d" % i, mid=i + 1, qos=1), "op") is None
    late = MessageReceived("t", b"q0")
    assert inbox.put_message(late, "op") == late  # itself: nothing of QoS 1 goes for it
    first = inbox.put_message(MessageReceived("t", b"q1 4", mid=5, qos=1), "op")
    assert first is not None and first.payload == b"q1 0"  # among QoS 1, the oldest as before
    assert payloads(drain(inbox)) == [b"q1 %d" % i for i in range(1, 5)]
    assert inbox.take_dropped() == 2


def test_wake_returns_none_at_once() -> None:
    inbox = Inbox()
    inbox.wake()
    assert inbox.get(10.0) is None


KNOWN = frozenset({"op-1", "emergency-1"})


def test_named_key_names_the_first_known_signer_of_a_real_envelope() -> None:
    operator, emergency = SigningKey.generate("op-1"), SigningKey.generate("emergency-1")
    payload = command_payload("stop", {}, env="lab", aud=["dev:dev-1"])
    for signers, expected in [
        ([operator], "op-1"),
        ([emergency, operator], "emergency-1"),
        ([SigningKey.generate("stranger"), operator], "op-1"),
        ([SigningKey.generate("stranger")], None),
    ]:
        raw = sign_command(payload, signers)
        parsed = parse_envelope(raw)  # what the core reads in it, strictly
        strict = next((k for k, _ in parsed.signatures if k in KNOWN), None)
        assert named_key(raw, KNOWN) == strict == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe not text",
        b"[" * 16_000,  # deeper than any JSON reader recurses
        b'{"signatures": "op-1"}',
        b'{"signatures": [{"keyid": ["op-1"]}]}',  # a key id that cannot be looked up
        b'{"signatures": [{"sig": "x"}, {"keyid": "op-1"}]}',
        b'[{"keyid": "op-1"}]',
        b'{"signatures": [{"keyid": "op-1"}], "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}',
    ],
)
def test_named_key_guesses_none_for_junk_of_any_shape_and_never_raises(raw: bytes) -> None:
    assert named_key(raw, KNOWN) is None

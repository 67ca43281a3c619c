"""The shell's ordering promises, on the real Runtime with in-memory ports (seconds, no broker,
no libVLC, no GPIO): floors on disk before the action they allow, a message's PUBACK only once
it is handled and its reports are on disk, one durable write for a turn's events, and the relay
off on every way out of the loop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from receiver import runtime
from receiver.central.signing import command_payload
from receiver.core import machine
from receiver.core.envelope import COMMAND_TYPE
from receiver.core.events import MessageReceived, PlaybackStarted
from receiver.errors import PlayerError
from receiver.pump import OutboxPump
from tests.lab.broker import report_json
from tests.lab.daemon import envelope
from tests.shell.doubles import DEVICE, Shell, open_shell, play_body


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    running = open_shell(tmp_path).start()
    try:
        yield running
    finally:
        if running.thread is not None and running.thread.is_alive():
            running.stop()


def test_floors_are_on_disk_before_the_sound_and_the_relay(shell: Shell) -> None:
    message = shell.command("play", play_body(), "news-1")
    shell.wait(lambda: shell.journal.has("relay on"), "relay on")
    shell.wait(lambda: bool(shell.journal.starting("play ")), "play")
    floors = shell.journal.index("store floors")
    assert floors < shell.journal.index("relay on")
    assert floors < shell.journal.index(shell.journal.starting("play ")[0])
    assert floors < shell.journal.index(f"puback {message.mid}")


def test_a_message_is_acknowledged_only_once_its_reports_are_on_disk(shell: Shell) -> None:
    message = shell.command("report", {}, "report-1")
    shell.wait(lambda: shell.journal.has(f"puback {message.mid}"), "the PUBACK")
    commits = [
        i
        for i, e in enumerate(shell.journal.entries)
        if e.startswith("outbox commit") and "accepted" in e
    ]
    assert commits and commits[0] < shell.journal.index(f"puback {message.mid}")
    assert "accepted" in shell.outbox.kinds() or any(
        b'"accepted"' in payload for _, payload in shell.link.published
    )


def test_a_junk_flood_waiting_in_the_inbox_is_one_durable_write(tmp_path: Path) -> None:
    shell = open_shell(tmp_path)
    junk = [shell.message(b"not an envelope %d" % i) for i in range(50)]  # queued before a turn
    shell.start()
    try:
        last = junk[-1].mid
        shell.wait(lambda: shell.journal.has(f"puback {last}"), "the last junk PUBACK")
        rejections = [e for e in shell.journal.starting("outbox commit") if "rejected" in e]
        assert len(rejections) == 1, rejections
        assert rejections[0].count("rejected") == 50
        first_ack = min(shell.journal.index(f"puback {m.mid}") for m in junk)
        assert shell.journal.index(rejections[0]) < first_ack
    finally:
        shell.stop()


def test_an_accepted_command_is_sent_without_waiting_for_the_flood_behind_it(
    tmp_path: Path,
) -> None:
    # A command and then forgeries naming its key, all waiting before the loop's turn: the
    # forgeries' refusals are grouped into one write, but the command's `accepted` goes out
    # first, not after the hundreds of verifications queued behind it in the same turn.
    shell = open_shell(tmp_path)
    sent = shell.link.publish

    def journaled(
        topic: str, payload: bytes, retain: bool = False, on_ack: Callable[[], None] | None = None
    ) -> bool:
        kind = json.loads(report_json(payload)).get("kind")
        if kind is not None:
            shell.journal.note(f"sent {kind}")
        return sent(topic, payload, retain, on_ack)

    shell.link.publish = journaled  # type: ignore[method-assign]
    body = json.dumps(command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"])).encode()
    forged = envelope(COMMAND_TYPE, body, [(shell.operator.id, bytes(range(64)))])
    shell.command("report", {}, "report-amid-flood")
    junk = [shell.message(forged) for _ in range(200)]
    shell.start()
    try:
        shell.wait(lambda: shell.journal.has(f"puback {junk[-1].mid}"), "the last PUBACK")
        refusals = [e for e in shell.journal.starting("outbox commit") if "rejected" in e]
        assert refusals
        assert shell.journal.index("sent accepted") < shell.journal.index(refusals[0])
    finally:
        shell.stop()


def test_the_relay_is_off_after_a_clean_stop_while_playing(shell: Shell) -> None:
    shell.command("play", play_body(), "news-2")
    shell.wait(lambda: shell.relay.on, "relay on")
    shell.stop()
    assert not shell.relay.on
    assert shell.journal.index("player closed") < shell.journal.index("relay closed off")
    assert shell.journal.has("link stopped")


def test_the_relay_is_off_when_the_store_fails_and_the_loop_dies(tmp_path: Path) -> None:
    shell = open_shell(tmp_path, store_fails=True).start()
    message = shell.command("play", play_body(), "news-3")
    shell.join()
    assert isinstance(shell.error, OSError)  # the daemon stops; systemd restarts it
    assert not shell.relay.on
    assert shell.journal.has("relay closed off")
    assert not shell.journal.starting("play ")
    assert not shell.journal.has(f"puback {message.mid}")  # the broker will send it again


def test_a_floors_commit_that_fails_in_the_background_stops_the_loop_before_the_sound(
    tmp_path: Path,
) -> None:
    """A command's floors are committed while the loop signs its report and finds its file;
    if that commit fails, nothing it would allow happens: no relay, no sound, no report sent,
    no PUBACK (the broker sends the command again after the restart)."""
    shell = open_shell(tmp_path, warm_up_s=0)
    shell.store.fail_commits = True
    shell.start()
    message = shell.command("play", play_body(), "news-18")
    shell.join()
    assert isinstance(shell.error, OSError)
    assert not shell.relay.on and not shell.journal.has("relay on")
    assert not shell.journal.starting("play ")
    assert not [topic for topic, _ in shell.link.published if topic.endswith("/events")]
    assert not shell.journal.has(f"puback {message.mid}")


@pytest.mark.parametrize(
    ("failure", "logged"),
    [(PlayerError("no audio output"), "effect_failed"), (ValueError("a bug"), "effect_bug")],
)
def test_an_adapter_failure_is_reported_and_a_bug_is_told_apart(
    tmp_path: Path, failure: BaseException, logged: str
) -> None:
    shell = open_shell(tmp_path)
    shell.player.fail_with = failure
    with structlog.testing.capture_logs() as logs:
        shell.start()
        try:
            shell.command("play", play_body(), "news-4")
            shell.wait(lambda: "failed" in shell.outbox.kinds() or _sent(shell, "failed"), "failed")
            shell.wait(lambda: not shell.relay.on, "relay off again")
        finally:
            shell.stop()
    assert [e["event"] for e in logs if e["event"] in ("effect_failed", "effect_bug")] == [logged]
    assert not shell.relay.on


def _sent(shell: Shell, kind: str) -> bool:
    return any(f'"kind":"{kind}"'.encode() in payload for _, payload in shell.link.published)


def test_the_pump_keeps_no_log_of_a_turn_that_failed() -> None:
    from tests.shell.doubles import Journal, Link, Outbox

    journal = Journal()
    outbox = Outbox(journal)
    pump = OutboxPump(outbox, Link(journal, lambda _: None), "t", lambda: None)
    written: list[str] = []
    with pytest.raises(RuntimeError), pump.turn():
        pump.add(1, b'{"kind":"started"}', lambda what, **_: written.append(what), "started")
        raise RuntimeError("power cut")
    assert written == [] and outbox.commits == 0


def test_an_unwritable_outbox_costs_the_reports_never_the_loop(shell: Shell) -> None:
    shell.outbox.unwritable = True
    with structlog.testing.capture_logs() as logs:
        lost = shell.command("volume", {"level": 40}, "while-locked")
        shell.wait(lambda: shell.journal.has(f"puback {lost.mid}"), "the PUBACK")
    failed = [e for e in logs if e["event"] == "effect_failed"]
    assert [e["effect"] for e in failed] == ["Emit"]
    assert not [e for e in logs if e["event"] == "accepted"]  # never logged as an event
    shell.outbox.unwritable = False
    kept = shell.command("volume", {"level": 50}, "after")
    shell.wait(lambda: shell.journal.has(f"puback {kept.mid}"), "the next PUBACK")
    assert any("accepted" in e for e in shell.journal.starting("outbox commit"))


def test_a_state_never_overtakes_the_events_that_led_to_it(shell: Shell) -> None:
    shell.command("play", play_body(), "news-5")

    def first(predicate: Callable[[str, bytes], bool]) -> int:
        return next(i for i, (t, p) in enumerate(list(shell.link.published)) if predicate(t, p))

    def started(topic: str, payload: bytes) -> bool:
        return topic.endswith("/events") and b'"kind":"started"' in payload

    def playing(topic: str, payload: bytes) -> bool:
        return topic.endswith("/state") and b'"state":"playing"' in payload

    shell.wait(lambda: any(playing(t, p) for t, p in list(shell.link.published)), "playing")
    assert first(started) < first(playing)


def test_a_report_is_on_disk_before_the_write_that_retires_its_intent(shell: Shell) -> None:
    """A volume command is carried out in its own step, and its intent retired there: a crash
    between the two writes must find the `accepted` report stored, or the intent still open
    (the kill loop once found a command spent without a word)."""
    message = shell.command("volume", {"level": 30}, "vol-1")
    shell.wait(lambda: shell.journal.has(f"puback {message.mid}"), "the PUBACK")
    accepted = next(e for e in shell.journal.starting("outbox commit") if "accepted" in e)
    assert shell.journal.index("store floors") < shell.journal.index(accepted)
    assert shell.journal.index(accepted) < shell.journal.index("store intent done vol-1")


def test_a_start_reported_soon_after_the_play_makes_one_state_after_its_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libVLC reports a start a few milliseconds after the play: no state is built, signed and
    sent in between (it would delay taking that report); one state, `playing`, follows the
    `started` event. No warm-up: the play comes in the turn that switches the relay on, a
    change of state of its own."""
    # The start comes after 5 ms, well inside the wait for it, however slow the machine.
    monkeypatch.setattr(runtime, "START_AWAIT_S", 5.0)
    shell = open_shell(tmp_path, warm_up_s=0)
    player = shell.player
    published_at_play: list[int] = []

    def play_then_report(
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
    ) -> None:
        player.journal.note(f"play {token}")
        player.token = token
        published_at_play.append(len(shell.link.published))
        threading.Timer(0.005, player.report, (PlaybackStarted(token),)).start()

    player.play = play_then_report  # type: ignore[method-assign]
    shell.start()
    try:
        shell.command("play", play_body(), "news-6")
        shell.wait(lambda: _sent(shell, "started"), "started")
        shell.wait(lambda: bool(_states_after_play(shell, published_at_play)), "a state")
        time.sleep(0.2)  # a second state, if one were coming
        after = list(shell.link.published)[published_at_play[0] :]
        states = _states_after_play(shell, published_at_play)
        assert len(states) == 1
        assert b'"state":"playing"' in states[0]
        started = next(i for i, (_, p) in enumerate(after) if b'"kind":"started"' in p)
        assert started < next(i for i, (t, _) in enumerate(after) if t.endswith("/state"))
    finally:
        shell.stop()


def _states_after_play(shell: Shell, published_at_play: list[int]) -> list[bytes]:
    if not published_at_play:
        return []
    after = list(shell.link.published)[published_at_play[0] :]
    return [p for t, p in after if t.endswith("/state")]


def test_a_command_s_file_is_opened_while_its_writes_go_to_disk_and_sounds_after_them(
    shell: Shell,
) -> None:
    """A command's cached file is opened paused (for the play its core will name: token 0)
    before its floors and intent are written, so libVLC opens it meanwhile; the play that
    resumes it comes only after every write before it (the started mark). Opening paused makes
    no sound: the write-ahead still comes before the action."""
    shell.command("play", play_body(), "news-7")
    shell.wait(lambda: bool(shell.journal.starting("play ")), "play")
    journal = shell.journal
    (play,) = journal.starting("play ")
    assert journal.starting("preroll ") == ["preroll 0"]  # once, and not again under its token
    opened = journal.index("preroll 0")
    assert opened < journal.index("store floors")
    assert journal.index("store intent started news-7") < journal.index(play)


def test_a_file_opened_ahead_for_a_play_that_does_not_come_is_let_go(tmp_path: Path) -> None:
    """Stopped during the amplifier's warm-up, the play never comes: the file opened ahead for
    it is dropped. And while the player is busy nothing is opened ahead (it would cut the
    sound)."""
    shell = open_shell(tmp_path, warm_up_s=1.0)
    shell.start()
    try:
        shell.command("play", play_body(), "news-9")
        shell.wait(lambda: shell.journal.has("relay on"), "relay on")
        shell.command("stop", {"target": "news-9"}, "stop-9")
        shell.wait(lambda: shell.journal.has("drop preroll 0"), "the file let go")
        assert not shell.journal.starting("play ")
        shell.command("play", play_body(), "news-10")
        shell.wait(lambda: bool(shell.journal.starting("play ")), "play", timeout=15.0)
        shell.command("play", play_body(), "news-11")  # while news-10 plays
        shell.wait(lambda: _sent(shell, "accepted") and shell.journal.has("puback 4"), "11")
        assert shell.journal.starting("preroll ") == ["preroll 0", "preroll 0"]  # 9 and 10
    finally:
        shell.stop()


def test_an_event_is_sent_as_soon_as_it_is_on_disk_before_its_log_line(tmp_path: Path) -> None:
    """The log line of an event is written after the event is handed to the link: writing it
    (a JSON line to the journal) need not delay the `started` event on its way to central."""
    shell = open_shell(tmp_path)
    send = shell.link.publish
    logged_when_sent: dict[bytes, int] = {}

    with structlog.testing.capture_logs() as logs:

        def publish(
            topic: str,
            payload: bytes,
            retain: bool = False,
            on_ack: Callable[[], None] | None = None,
        ) -> bool:
            logged_when_sent.setdefault(report_json(payload), len(logs))
            return send(topic, payload, retain, on_ack)

        shell.link.publish = publish  # type: ignore[method-assign]
        shell.start()
        try:
            shell.command("play", play_body(), "news-8")
            shell.wait(lambda: _sent(shell, "started"), "started")
            time.sleep(0.1)
        finally:
            shell.stop()
    started_line = next(
        i for i, e in enumerate(logs) if e["event"] == "started" and e.get("ref") == "news-8"
    )
    (started_sent,) = [
        at for payload, at in logged_when_sent.items() if b'"kind":"started"' in payload
    ]
    assert started_sent <= started_line  # sent when its log line was not yet written


def test_no_durable_write_of_the_broker_s_acks_waits_between_a_play_and_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the broker acknowledged is forgotten in a durable write of its own; while a play's
    start report is awaited (and for a moment after it, while the `started` event leaves) that
    write waits, so that it does not stand between the report and its turn."""
    # The start comes after 20 ms, well inside the wait for it, however slow the machine.
    monkeypatch.setattr(runtime, "START_AWAIT_S", 5.0)
    shell = open_shell(tmp_path, warm_up_s=0)
    player = shell.player

    def play_then_report(
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
    ) -> None:
        player.journal.note(f"play {token}")
        player.token = token
        threading.Timer(0.02, player.report, (PlaybackStarted(token),)).start()

    player.play = play_then_report  # type: ignore[method-assign]
    shell.start()
    try:
        shell.command("play", play_body(), "news-12")
        shell.wait(lambda: _sent(shell, "started"), "started")
        shell.wait(lambda: bool(shell.journal.starting("outbox ack ")), "the acks forgotten")
    finally:
        shell.stop()
    journal = shell.journal.entries
    (play,) = [i for i, e in enumerate(journal) if e.startswith("play ")]
    started = next(
        i for i, e in enumerate(journal) if e.startswith("outbox commit") and "started" in e
    )
    assert not [e for e in journal[play:started] if e.startswith("outbox ack ")]


def test_a_command_s_play_follows_its_writes_in_its_own_turn_before_its_report_is_written(
    tmp_path: Path,
) -> None:
    """A play command's cache hit is stepped in the command's own turn: its play follows its
    floors and intent and its started mark at once, and its `accepted` goes to disk after the
    play, while libVLC starts it (before the PUBACK, as ever). Nothing is settled and nothing
    is written to the outbox between the command and its sound."""
    shell = open_shell(tmp_path, warm_up_s=0)
    shell.start()
    try:
        message = shell.command("play", play_body(), "news-13")
        shell.wait(lambda: _sent(shell, "started"), "started")
        time.sleep(0.1)
    finally:
        shell.stop()
    journal = shell.journal.entries
    floors = journal.index("store floors")
    mark = journal.index("store intent started news-13")
    (play,) = [i for i, e in enumerate(journal) if e.startswith("play ")]
    accepted = next(
        i for i, e in enumerate(journal) if e.startswith("outbox commit") and "accepted" in e
    )
    assert floors < mark < play < accepted < journal.index(f"puback {message.mid}")
    assert not [e for e in journal[floors:play] if e.startswith("outbox ")]


def _journal_checks(shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    """Note "check" in the journal when the core takes a message (its parsing, signatures)."""
    step = machine.step

    def noted(state: Any, event: Any, now: Any) -> Any:
        if isinstance(event, MessageReceived):
            shell.journal.note("check")
        return step(state, event, now)

    monkeypatch.setattr(machine, "step", noted)


def test_a_play_s_cached_file_is_opened_before_the_command_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop opens the cached file a play names (paused: no sound) as soon as it takes the
    command, before the core checks it, so libVLC's open starts that much sooner; the play
    still comes only after the check and the writes."""
    shell = open_shell(tmp_path, warm_up_s=0)
    _journal_checks(shell, monkeypatch)
    shell.start()
    try:
        shell.command("play", play_body(), "news-14")
        shell.wait(lambda: bool(shell.journal.starting("play ")), "play")
    finally:
        shell.stop()
    journal = shell.journal
    (play,) = journal.starting("play ")
    assert journal.starting("preroll ") == ["preroll 0"]
    assert journal.index("preroll 0") < journal.index("check") < journal.index("store floors")
    assert journal.index("store intent started news-14") < journal.index(play)


def test_a_file_opened_for_a_refused_play_is_let_go_and_a_flood_of_them_opens_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged play naming a cached file: its file, opened before the check, is let go at the
    turn's end and nothing plays. For a while after that, files are opened only once a command
    is checked: forgeries that follow open nothing, and a real command still plays."""
    shell = open_shell(tmp_path, warm_up_s=0)
    _journal_checks(shell, monkeypatch)
    body = json.dumps(command_payload("play", play_body(), env="lab", aud=[f"dev:{DEVICE}"]))
    forged = envelope(COMMAND_TYPE, body.encode(), [(shell.operator.id, bytes(range(64)))])
    shell.start()
    try:
        shell.message(forged)
        shell.wait(lambda: shell.journal.has("drop preroll 0"), "the file let go")
        for _ in range(3):
            shell.message(forged)
        shell.wait(lambda: len(shell.journal.starting("check")) == 4, "the forgeries checked")
        assert shell.journal.starting("preroll ") == ["preroll 0"]
        assert not shell.journal.starting("play ")
        shell.command("play", play_body(), "news-15")
        shell.wait(lambda: bool(shell.journal.starting("play ")), "play")
    finally:
        shell.stop()
    entries = shell.journal.entries
    assert entries.index("preroll 0") < entries.index("check")
    opened_again = len(entries) - 1 - entries[::-1].index("preroll 0")
    last_check = len(entries) - 1 - entries[::-1].index("check")
    assert shell.journal.starting("preroll ") == ["preroll 0", "preroll 0"]
    assert last_check < opened_again  # the real command's file, opened once it was checked


def test_no_log_line_is_written_between_a_command_and_its_started_event(
    tmp_path: Path,
) -> None:
    """Formatting and writing log lines does not stand between a command and its sound, nor
    between the sound's start and its `started` event: the lines of the relay switch, the play
    and the `accepted` report wait until the start is reported and its event sent."""
    shell = open_shell(tmp_path, warm_up_s=0)
    player, link = shell.player, shell.link
    play, publish = player.play, link.publish
    logged_at: dict[str, list[str]] = {}

    with structlog.testing.capture_logs() as logs:

        def noted_play(*args: Any, **kwargs: Any) -> None:
            logged_at["play"] = _lines(logs)
            play(*args, **kwargs)

        def noted_publish(
            topic: str,
            payload: bytes,
            retain: bool = False,
            on_ack: Callable[[], None] | None = None,
        ) -> bool:
            if b'"kind":"started"' in report_json(payload):
                logged_at["started"] = _lines(logs)
            return publish(topic, payload, retain, on_ack)

        player.play = noted_play  # type: ignore[method-assign]
        link.publish = noted_publish  # type: ignore[method-assign]
        shell.start()
        try:
            shell.command("play", play_body(), "news-16")
            shell.wait(lambda: any(e["event"] == "started" for e in logs), "started logged")
        finally:
            shell.stop()
    booted = ["relay_switched", "daemon_started", "broker_connected"]  # the boot's lines
    assert logged_at["play"] == booted
    assert logged_at["started"] == booted
    events = _lines(logs)
    for line in ("relay_switched", "play", "accepted"):
        assert line in events[len(booted) :], (line, events)


def _lines(logs: list[MutableMapping[str, Any]]) -> list[str]:
    """The events of the lines a deployment writes (level info and up, not debug)."""
    return [e["event"] for e in logs if e.get("log_level") != "debug"]


def test_a_turn_s_events_are_handed_to_the_link_before_their_commit(shell: Shell) -> None:
    """The link's thread sends a turn's events while their commit waits for the card (an
    ``fsync`` lets other threads run), so the commit no longer stands between an event and
    central. Their log lines, and the message's PUBACK, still wait for the commit. (A report
    that a later write of the turn retires, such as a command's `accepted` before its intent
    is let go, is committed before that write, as ever, and sent at the turn's end.)"""
    with structlog.testing.capture_logs() as logs:
        message = shell.message(b"not an envelope")
        shell.wait(lambda: shell.journal.has(f"puback {message.mid}"), "the PUBACK")
    entries = shell.journal.entries
    sent, committed = entries.index("publish rejected"), entries.index("outbox commit rejected")
    assert sent < committed < entries.index(f"puback {message.mid}")
    assert [e["event"] for e in logs].count("rejected") == 1


def _play_starting_after(
    shell: Shell, delay_s: float, once: Callable[[], bool] = lambda: True
) -> None:
    """The player's start is reported ``delay_s`` after the play (libVLC's few milliseconds),
    and not before ``once()`` holds (given up on after 10 s: the test's asserts then fail)."""
    player = shell.player

    def play_then_report(
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
    ) -> None:
        player.journal.note(f"play {token}")
        player.token = token

        def started() -> None:
            deadline = time.monotonic() + 10
            while not once() and time.monotonic() < deadline:
                time.sleep(0.01)
            player.journal.note("sound started")
            player.report(PlaybackStarted(token))

        threading.Timer(delay_s, started).start()

    player.play = play_then_report  # type: ignore[method-assign]


def test_a_play_s_accepted_leaves_at_once_and_its_write_waits_to_go_with_its_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While libVLC starts a command's file, the `accepted` report is sent, and its commit
    waits for the start report (a few milliseconds, at most a moment): written then, it would
    stand between the start report and the `started` event. The two reports go to disk in one
    write, and only then is the command acknowledged to the broker."""
    # The start comes after 20 ms, well inside the wait for it, however slow the machine.
    monkeypatch.setattr(runtime, "START_AWAIT_S", 5.0)
    shell = open_shell(tmp_path, warm_up_s=0)
    _play_starting_after(shell, 0.02)
    shell.start()
    try:
        message = shell.command("play", play_body(), "news-16")
        shell.wait(lambda: shell.journal.has(f"puback {message.mid}"), "the PUBACK")
    finally:
        shell.stop()
    entries = shell.journal.entries
    (play,) = [i for i, e in enumerate(entries) if e.startswith("play ")]
    assert play < entries.index("publish accepted") < entries.index("sound started")
    assert entries.index("sound started") < entries.index("publish started")
    written = entries.index("outbox commit accepted,started")
    assert entries.index("publish started") < written < entries.index(f"puback {message.mid}")


def test_a_start_that_does_not_come_soon_lets_the_turn_end(tmp_path: Path) -> None:
    """The wait for a play's start report is short: a start that takes longer (a slow card, a
    player being restarted) lets the turn end, its `accepted` is written and the command
    acknowledged, and the `started` follows in a turn of its own."""
    shell = open_shell(tmp_path, warm_up_s=0)
    # Reported only once the command is acknowledged, i.e. once its turn ended without the
    # start: a start 0.5 s late could otherwise beat a turn slowed by a busy machine.
    _play_starting_after(shell, 0.5, lambda: bool(shell.journal.starting("puback ")))
    shell.start()
    try:
        message = shell.command("play", play_body(), "news-17")
        shell.wait(lambda: shell.journal.has(f"puback {message.mid}"), "the PUBACK")
        shell.wait(lambda: _sent(shell, "started"), "started")
    finally:
        shell.stop()
    entries = shell.journal.entries
    acked = entries.index(f"puback {message.mid}")
    assert entries.index("outbox commit accepted") < acked < entries.index("sound started")
    assert entries.index("sound started") < entries.index("outbox commit started")


def test_events_whose_commit_fails_are_said_lost_and_the_loop_goes_on(shell: Shell) -> None:
    """Handed to the link before a commit that then fails (a full card), a turn's events may
    still reach central, but the board keeps no copy: they are logged as lost, never as
    events, and are not sent again; the next turn's are kept as ever."""
    shell.outbox.commit_fails = True
    with structlog.testing.capture_logs() as logs:
        lost = shell.command("volume", {"level": 40}, "while-full")
        shell.wait(lambda: shell.journal.has(f"puback {lost.mid}"), "the PUBACK")
        shell.outbox.commit_fails = False
        kept = shell.command("volume", {"level": 50}, "after")
        shell.wait(lambda: shell.journal.has(f"puback {kept.mid}"), "the next PUBACK")
    failed = [e for e in logs if e["event"] == "effect_failed"]
    assert [(e["effect"], e["events_lost"]) for e in failed] == [("Emit", 1)]
    assert [e.get("ref") for e in logs if e["event"] == "accepted"] == ["after"]
    sent_refs = [json.loads(p).get("ref") for _, p in shell.link.published if b'"accepted"' in p]
    assert sent_refs.count("while-full") <= 1 and sent_refs.count("after") == 1
    assert "accepted" not in shell.outbox.kinds() or shell.outbox.kinds().count("accepted") == 1
